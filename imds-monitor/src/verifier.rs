//! The verifier's own account of the kernel programs: how much work each
//! one costs it (a measurement load), and why it rejected one (a rejection
//! a person can read, with the whole log kept in a file).
//!
//! aya 0.14 discards the verifier log of a load that succeeds, and
//! `bpf_prog_info.verified_insns` only exists from 5.16. So the statistics
//! come from a second load of each program: the embedded object is parsed
//! again with aya-obj, relocated against the maps (and BTF) of the programs
//! already loaded, and loaded with a raw `BPF_PROG_LOAD` at `BPF_LOG_STATS`;
//! the extra program is closed at once. This works the same from 5.10 on.

use std::{
    collections::{HashMap, HashSet},
    fmt, fs, io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::{Ebpf, maps::Map};
use aya_obj::{Object, ProgramSection, generated::bpf_attach_type};
use serde::Serialize;

/// Processed instructions one program may cost the verifier: a fifth of
/// its 1M limit, so a kernel whose verifier explores more (the same release
/// can differ from build to build) still accepts it.
pub const BUDGET_INSNS: u32 = 200_000;
/// Verification time of all programs together.
pub const BUDGET_TOTAL: Duration = Duration::from_secs(1);

/// `BPF_LOG_STATS`: only the summary lines, no per-instruction log.
const BPF_LOG_STATS: u32 = 4;

// ---------------------------------------------------------------- bpf()

pub const BPF_MAP_CREATE: libc::c_int = 0;
pub const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_BTF_GET_FD_BY_ID: libc::c_int = 19;

pub const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const BPF_PROG_TYPE_SOCK_OPS: u32 = 13;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;

/// `union bpf_attr` for BPF_PROG_LOAD, up to `core_relo_cnt` (5.17; older
/// kernels require it to be zero, as it is). No padding: the kernel reads
/// every byte, and stray bytes at 116 would be a CO-RE relocation count
/// (a silent EINVAL).
#[repr(C)]
#[derive(Default)]
pub struct ProgLoad {
    pub prog_type: u32,
    pub insn_cnt: u32,
    pub insns: u64,
    pub license: u64,
    pub log_level: u32,
    pub log_size: u32,
    pub log_buf: u64,
    pub kern_version: u32,
    pub prog_flags: u32,
    pub prog_name: [u8; 16],
    pub prog_ifindex: u32,
    pub expected_attach_type: u32,
    pub prog_btf_fd: u32,
    pub func_info_rec_size: u32,
    pub func_info: u64,
    pub func_info_cnt: u32,
    pub line_info_rec_size: u32,
    pub line_info: u64,
    pub line_info_cnt: u32,
    pub attach_btf_id: u32,
    pub attach_prog_fd: u32,
    pub core_relo_cnt: u32,
}

/// bpf_get_current_ancestor_cgroup_id.
pub const HELPER_ANCESTOR_CGROUP_ID: i32 = 123;

/// Whether tracepoint programs may call helper `id` on this kernel: loads
/// `r1 = 0; call id; r0 = 0; exit` and closes it again. (Linux 5.10 has
/// bpf_get_current_ancestor_cgroup_id for socket programs, not tracepoints.)
pub fn tracepoint_helper_supported(id: i32) -> bool {
    #[repr(C)]
    struct Insn {
        code: u8,
        regs: u8,
        off: i16,
        imm: i32,
    }
    let insns = [
        // r1 = 0
        Insn {
            code: 0xb7,
            regs: 1,
            off: 0,
            imm: 0,
        },
        // call id
        Insn {
            code: 0x85,
            regs: 0,
            off: 0,
            imm: id,
        },
        // r0 = 0
        Insn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: 0,
        },
        // exit
        Insn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = c"GPL";
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_TRACEPOINT,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name16("imds_probe"),
        ..ProgLoad::default()
    };
    bpf(BPF_PROG_LOAD, &attr).is_ok()
}

/// `union bpf_attr` for BPF_BTF_GET_FD_BY_ID.
#[repr(C)]
struct GetFdById {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// A program name as the kernel keeps it: 15 bytes and a NUL.
pub fn name16(name: &str) -> [u8; 16] {
    let mut out = [0; 16];
    let len = name.len().min(15);
    out[..len].copy_from_slice(&name.as_bytes()[..len]);
    out
}

/// bpf(cmd, attr); the object it returns is closed when the fd drops.
/// The error is the errno.
pub fn bpf<T>(cmd: libc::c_int, attr: &T) -> Result<OwnedFd, i32> {
    let size = size_of::<T>() as libc::c_uint;
    // SAFETY: attr points to a fully initialized, correctly laid out head of
    // bpf_attr of `size` bytes; the kernel reads it, and writes only to the
    // buffers it points to (which outlive the call).
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_ref(attr), size) };
    if ret < 0 {
        return Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    // SAFETY: on success bpf() returns a new file descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) })
}

// ---------------------------------------------------------------- stats

/// The verifier's summary of one load (`BPF_LOG_STATS`). Older kernels
/// print fewer fields: what is missing is `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub processed_insns: Option<u32>,
    pub insn_limit: Option<u32>,
    pub max_states_per_insn: Option<u32>,
    pub total_states: Option<u32>,
    pub peak_states: Option<u32>,
    pub mark_read: Option<u32>,
    pub verification_us: Option<u64>,
    /// Per subprogram, e.g. `"120+0+32"`.
    pub stack_depth: Option<String>,
}

/// Reads the summary lines of a verifier log:
/// `processed N insns (limit 1000000) max_states_per_insn X total_states Y
/// peak_states Z mark_read W`, `verification time T usec`, `stack depth A+B`.
/// The last of each wins (a log holds one load).
pub fn parse_stats(log: &str) -> Stats {
    let mut stats = Stats::default();
    for line in log.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("verification time ") {
            if let Some(us) = rest
                .strip_suffix(" usec")
                .and_then(|n| n.trim().parse().ok())
            {
                stats.verification_us = Some(us);
            }
        } else if let Some(rest) = line.strip_prefix("stack depth ") {
            stats.stack_depth = Some(rest.trim().to_owned());
        } else if line.starts_with("processed ") && line.contains(" insns") {
            let words: Vec<&str> = line
                .split_whitespace()
                .map(|w| w.trim_matches(|c| c == '(' || c == ')' || c == ','))
                .collect();
            for pair in words.windows(2) {
                let value = pair[1].parse().ok();
                let field = match pair[0] {
                    "processed" => &mut stats.processed_insns,
                    "limit" => &mut stats.insn_limit,
                    "max_states_per_insn" => &mut stats.max_states_per_insn,
                    "total_states" => &mut stats.total_states,
                    "peak_states" => &mut stats.peak_states,
                    "mark_read" => &mut stats.mark_read,
                    _ => continue,
                };
                if value.is_some() {
                    *field = value;
                }
            }
        }
    }
    stats
}

/// One program's figures from the measurement load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProgramStats {
    pub name: String,
    /// sched_cls, cgroup_sock_addr, sock_ops, tracepoint.
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(flatten)]
    pub stats: Stats,
    /// Why this program could not be measured (then `stats` is empty, or
    /// holds what a rejection's log said).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ProgramStats {
    pub fn over_budget(&self) -> bool {
        self.stats.processed_insns.is_some_and(|n| n > BUDGET_INSNS)
    }
}

/// Every program's figures, on one kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `uname -r`.
    pub kernel: String,
    pub budget_insns: u32,
    pub budget_total_us: u64,
    /// Sum of the programs' verification times.
    pub total_verification_us: u64,
    pub programs: Vec<ProgramStats>,
    /// The program the verifier refused, when the programs did not load
    /// (then `programs` is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejected>,
}

/// A [`Rejection`] for machines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// `None` when the loader did not say which program it was.
    pub program: Option<String>,
    pub processed_insns: Option<u32>,
    pub instruction: Option<String>,
    pub source: Option<String>,
    pub reason: Option<String>,
    /// The file with the whole verifier log.
    pub log: Option<PathBuf>,
}

impl Report {
    pub fn new(kernel: String, mut programs: Vec<ProgramStats>) -> Self {
        programs.sort_by(|a, b| a.name.cmp(&b.name));
        let total_verification_us = programs
            .iter()
            .filter_map(|p| p.stats.verification_us)
            .sum();
        Self {
            kernel,
            budget_insns: BUDGET_INSNS,
            budget_total_us: BUDGET_TOTAL.as_micros() as u64,
            total_verification_us,
            programs,
            rejected: None,
        }
    }

    /// No program loaded: what the verifier said about the one it refused.
    pub fn rejected(rejection: &Rejection) -> Self {
        let s = &rejection.summary;
        Self {
            rejected: Some(Rejected {
                program: rejection.program.clone(),
                processed_insns: s.processed_insns,
                instruction: s.instruction.clone(),
                source: s.source.clone(),
                reason: s.reason.clone(),
                log: rejection.log.as_ref().ok().cloned(),
            }),
            ..Self::new(rejection.kernel.clone(), Vec::new())
        }
    }

    pub fn total(&self) -> Duration {
        Duration::from_micros(self.total_verification_us)
    }

    /// The program that costs the verifier the most instructions.
    pub fn largest(&self) -> Option<&ProgramStats> {
        self.programs
            .iter()
            .filter(|p| p.stats.processed_insns.is_some())
            .max_by_key(|p| p.stats.processed_insns)
    }

    pub fn over_budget(&self) -> impl Iterator<Item = &ProgramStats> {
        self.programs.iter().filter(|p| p.over_budget())
    }

    pub fn unmeasured(&self) -> impl Iterator<Item = &ProgramStats> {
        self.programs.iter().filter(|p| p.error.is_some())
    }

    /// One line per program: the `check --verifier` table.
    pub fn table(&self) -> String {
        let mut rows = vec![[
            "program".to_owned(),
            "type".to_owned(),
            "insns".to_owned(),
            "max states/insn".to_owned(),
            "total states".to_owned(),
            "peak states".to_owned(),
            "time".to_owned(),
        ]];
        let num = |n: Option<u32>| n.map_or_else(|| "-".to_owned(), |n| thousands(n.into()));
        for p in &self.programs {
            let s = &p.stats;
            let insns = match (s.processed_insns, &p.error) {
                (Some(n), _) if n > BUDGET_INSNS => format!("{} !", thousands(n.into())),
                (Some(n), _) => thousands(n.into()),
                (None, Some(_)) => "failed".to_owned(),
                (None, None) => "-".to_owned(),
            };
            rows.push([
                p.name.clone(),
                p.kind.to_owned(),
                insns,
                num(s.max_states_per_insn),
                num(s.total_states),
                num(s.peak_states),
                s.verification_us.map_or_else(|| "-".to_owned(), millis),
            ]);
        }
        rows.push([
            "total".to_owned(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            millis(self.total_verification_us),
        ]);
        let mut widths = [0; 7];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let mut out = String::new();
        for row in &rows {
            let mut line = format!("{:<w$}", row[0], w = widths[0]);
            line += &format!("  {:<w$}", row[1], w = widths[1]);
            for (cell, w) in row.iter().zip(widths).skip(2) {
                line += &format!("  {cell:>w$}");
            }
            out += line.trim_end();
            out.push('\n');
        }
        for p in self.unmeasured() {
            out += &format!(
                "{}: not measured: {}\n",
                p.name,
                p.error.as_deref().unwrap_or("")
            );
        }
        out += &format!(
            "budget: {} processed insns per program, {} s of verification in all (! marks a program over it)\n",
            thousands(BUDGET_INSNS.into()),
            BUDGET_TOTAL.as_secs()
        );
        out
    }
}

/// `41230` -> `41,230`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn millis(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

// ---------------------------------------------------------------- measurement load

/// The kernel program type and expected attach type of a section, as aya
/// loads it; `None` for kinds this tool does not use.
fn program_type(section: &ProgramSection) -> Option<(&'static str, u32, u32)> {
    Some(match section {
        ProgramSection::SchedClassifier => ("sched_cls", BPF_PROG_TYPE_SCHED_CLS, 0),
        ProgramSection::TracePoint => ("tracepoint", BPF_PROG_TYPE_TRACEPOINT, 0),
        ProgramSection::SockOps => ("sock_ops", BPF_PROG_TYPE_SOCK_OPS, 0),
        ProgramSection::SocketFilter => ("socket_filter", BPF_PROG_TYPE_SOCKET_FILTER, 0),
        ProgramSection::CgroupSockAddr { attach_type } => {
            let attach: bpf_attach_type = (*attach_type).into();
            (
                "cgroup_sock_addr",
                BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                attach as u32,
            )
        }
        _ => return None,
    })
}

/// The aya map's data, whatever its kind.
fn map_fd(map: &Map) -> std::os::fd::BorrowedFd<'_> {
    let data = match map {
        Map::Array(m)
        | Map::ArrayOfMaps(m)
        | Map::BloomFilter(m)
        | Map::CgroupArray(m)
        | Map::CgroupStorage(m)
        | Map::CgrpStorage(m)
        | Map::CpuMap(m)
        | Map::DevMap(m)
        | Map::DevMapHash(m)
        | Map::HashMap(m)
        | Map::HashOfMaps(m)
        | Map::InodeStorage(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuCgroupStorage(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::PerfEventArray(m)
        | Map::ProgramArray(m)
        | Map::Queue(m)
        | Map::ReusePortSockArray(m)
        | Map::RingBuf(m)
        | Map::SockHash(m)
        | Map::SockMap(m)
        | Map::SkStorage(m)
        | Map::Stack(m)
        | Map::StackTraceMap(m)
        | Map::Unsupported(m)
        | Map::XskMap(m) => m,
    };
    data.fd().as_fd()
}

/// The BTF object aya loaded with the programs (any loaded program names
/// it), so func_info and line_info mean the same as in the real load.
fn loaded_btf(ebpf: &Ebpf) -> Option<OwnedFd> {
    let id = ebpf
        .programs()
        .find_map(|(_, p)| p.info().ok().and_then(|i| i.btf_id()))?;
    bpf(
        BPF_BTF_GET_FD_BY_ID,
        &GetFdById {
            id,
            next_id: 0,
            open_flags: 0,
        },
    )
    .ok()
}

/// Loads every program of `object` once more, relocated against the maps
/// of `ebpf` (which loaded the same object), with `BPF_LOG_STATS`, and
/// reads the verifier's summary. Nothing is attached; each extra program is
/// closed as soon as its log is read.
pub fn measure(ebpf: &Ebpf, object: &[u8]) -> Result<Vec<ProgramStats>> {
    let mut obj = Object::parse(object).context("parsing the embedded eBPF object")?;
    if obj.has_btf_relocations() {
        let target = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
        obj.relocate_btf(&target)
            .context("BTF relocations of the embedded object")?;
    }
    let definitions = std::mem::take(&mut obj.maps);
    let fds: HashMap<&str, i32> = ebpf
        .maps()
        .map(|(name, map)| (name, map_fd(map).as_raw_fd()))
        .collect();
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    obj.relocate_maps(
        definitions
            .iter()
            .filter_map(|(name, def)| Some((name.as_str(), *fds.get(name.as_str())?, def))),
        &text_sections,
    )
    .context("relocating the maps of the embedded object")?;
    obj.relocate_calls(&text_sections)
        .context("relocating the calls of the embedded object")?;
    obj.sanitize_functions(aya::features());

    let btf = loaded_btf(ebpf);
    let kern_version = aya::util::KernelVersion::current().map_or(0, |v| v.code());
    let mut out = Vec::new();
    for (name, program) in &obj.programs {
        let Some((kind, prog_type, attach)) = program_type(&program.section) else {
            continue;
        };
        let function = &obj.functions[&program.function_key()];
        let func_info = function.func_info.func_info_bytes();
        let line_info = function.line_info.line_info_bytes();
        let mut attr = ProgLoad {
            prog_type,
            insn_cnt: function.instructions.len() as u32,
            insns: function.instructions.as_ptr() as u64,
            license: program.license.as_ptr() as u64,
            log_level: BPF_LOG_STATS,
            kern_version: program.kernel_version.unwrap_or(kern_version),
            prog_name: name16(name),
            expected_attach_type: attach,
            ..ProgLoad::default()
        };
        if let Some(btf) = &btf {
            attr.prog_btf_fd = btf.as_raw_fd() as u32;
            if function.func_info_rec_size > 0 {
                attr.func_info_rec_size = function.func_info_rec_size as u32;
                attr.func_info = func_info.as_ptr() as u64;
                attr.func_info_cnt = function.func_info.len() as u32;
            }
            if function.line_info_rec_size > 0 {
                attr.line_info_rec_size = function.line_info_rec_size as u32;
                attr.line_info = line_info.as_ptr() as u64;
                attr.line_info_cnt = function.line_info.len() as u32;
            }
        }
        let (result, log) = load_with_log(&mut attr);
        let stats = parse_stats(&log);
        let error = match result {
            // The extra program goes at once.
            Ok(fd) => {
                drop(fd);
                None
            }
            Err(errno) => {
                let why = summarize(&log).reason.unwrap_or_default();
                Some(format!("{}{why}", errno_prefix(errno)))
            }
        };
        out.push(ProgramStats {
            name: name.clone(),
            kind,
            stats,
            error,
        });
    }
    Ok(out)
}

fn errno_prefix(errno: i32) -> String {
    format!("{}: ", io::Error::from_raw_os_error(errno))
}

/// BPF_PROG_LOAD with a log buffer, grown while the kernel says it is too
/// small (ENOSPC). Returns the program (or errno) and the log.
fn load_with_log(attr: &mut ProgLoad) -> (Result<OwnedFd, i32>, String) {
    let mut size = 64 << 10;
    loop {
        let mut buf = vec![0u8; size];
        attr.log_buf = buf.as_mut_ptr() as u64;
        attr.log_size = size as u32;
        let result = bpf(BPF_PROG_LOAD, &*attr);
        attr.log_buf = 0;
        attr.log_size = 0;
        if matches!(result, Err(libc::ENOSPC)) && size < 16 << 20 {
            size *= 8;
            continue;
        }
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        buf.truncate(end);
        return (result, String::from_utf8_lossy(&buf).into_owned());
    }
}

// ---------------------------------------------------------------- rejections

/// What a rejection's log says, in the words a person needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub processed_insns: Option<u32>,
    /// The last instruction the verifier printed before giving up, e.g.
    /// `1234: (79) r1 = *(u64 *)(r10 -8)`.
    pub instruction: Option<String>,
    /// The source line of it, if the log has line info.
    pub source: Option<String>,
    /// The verifier's last word, e.g. `R3 invalid mem access 'scalar'`.
    pub reason: Option<String>,
}

/// Lines that close every log and say nothing about the failure.
fn is_summary_line(line: &str) -> bool {
    line.starts_with("verification time ")
        || line.starts_with("stack depth ")
        || (line.starts_with("processed ") && line.contains(" insns"))
        || line.starts_with("-- END PROG LOAD LOG --")
}

/// An instruction as the verifier prints it: `123: (bf) r1 = r6`.
fn is_instruction(line: &str) -> bool {
    line.split_once(": (")
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

const MAX_PART: usize = 200;

fn clip(s: &str) -> String {
    let s = s.trim();
    if s.len() <= MAX_PART {
        return s.to_owned();
    }
    let mut end = MAX_PART;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Reads the end of a rejection's log: the reason (the last line that is not
/// a summary line), the last instruction and source line before it.
pub fn summarize(log: &str) -> Summary {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let Some(at) = lines.iter().rposition(|l| !is_summary_line(l)) else {
        return Summary {
            processed_insns: parse_stats(log).processed_insns,
            ..Summary::default()
        };
    };
    let before = &lines[..at];
    // 6.x appends the registers after the instruction: `r1 = r6  ; R1_w=...`.
    let instruction = before.iter().rev().find(|l| is_instruction(l)).map(|l| {
        let l = l.split_once("  ;").map_or(*l, |(insn, _)| insn);
        clip(l)
    });
    let source = before
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix(';'))
        .map(clip);
    Summary {
        processed_insns: parse_stats(log).processed_insns,
        instruction,
        source,
        reason: Some(clip(lines[at])),
    }
}

/// A program the kernel refused, as one line; the whole log is in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// `None` when the caller did not say which program it was loading.
    pub program: Option<String>,
    /// `uname -r`.
    pub kernel: String,
    /// The error the bpf() call returned.
    pub error: String,
    pub summary: Summary,
    /// Where the whole log is, or why it could not be written.
    pub log: Result<PathBuf, String>,
}

impl Rejection {
    /// Keeps the log in a file and reads its end.
    pub fn new(program: Option<&str>, error: String, log: &str) -> Self {
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|r| r.trim().to_owned())
            .unwrap_or_else(|_| "?".to_owned());
        let saved = save_log(program.unwrap_or("program"), log).map_err(|e| format!("{e:#}"));
        Self {
            program: program.map(str::to_owned),
            kernel,
            error,
            summary: summarize(log),
            log: saved,
        }
    }
}

/// `imds_classify rejected by the verifier of Linux 6.18.44: BPF program is
/// too large. Processed 1000001 insn (processed 1,000,001 insns; last insn
/// ...; source ...); whole log: /run/imds-monitor/...`, one line.
impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let program = self.program.as_deref().unwrap_or("a program");
        write!(
            f,
            "{program} rejected by the verifier of Linux {}: ",
            self.kernel
        )?;
        let s = &self.summary;
        match &s.reason {
            Some(reason) => write!(f, "{reason}")?,
            None => write!(f, "{} (the log is empty)", self.error)?,
        }
        let mut details = Vec::new();
        if let Some(n) = s.processed_insns {
            details.push(format!("processed {} insns", thousands(n.into())));
        }
        if let Some(insn) = &s.instruction {
            details.push(format!("last insn {insn}"));
        }
        if let Some(source) = &s.source {
            details.push(format!("source: {source}"));
        }
        if !details.is_empty() {
            write!(f, " ({})", details.join("; "))?;
        }
        match &self.log {
            Ok(path) => write!(f, "; whole log: {}", path.display()),
            Err(e) => write!(f, "; the log could not be saved: {e}"),
        }
    }
}

impl std::error::Error for Rejection {}

/// A load that failed because the verifier refused a program, with what to
/// do about it. `check` finds it in the error chain and reports its parts.
#[derive(Debug)]
pub struct LoadFailure {
    pub rejection: Rejection,
    pub hint: String,
}

/// `loading the eBPF programs failed: <the rejection>` and, on the next
/// line, `hint: ...` (the form of every load error, see check's rules).
impl fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loading the eBPF programs failed: {}\nhint: {}",
            self.rejection, self.hint
        )
    }
}

impl std::error::Error for LoadFailure {}

/// Where logs go: /run/imds-monitor when we may write there, else $TMPDIR.
fn log_dir() -> PathBuf {
    let run = Path::new("/run/imds-monitor");
    if fs::create_dir_all(run).is_ok()
        && nix::unistd::access(run, nix::unistd::AccessFlags::W_OK).is_ok()
    {
        return run.to_owned();
    }
    std::env::temp_dir()
}

/// Writes `log` to `<dir>/verifier-<program>-<UTC timestamp>-<pid>-<n>.log`.
fn save_log(program: &str, log: &str) -> Result<PathBuf> {
    let stamp = humantime::format_rfc3339_millis(SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    let safe: String = program
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    // Never another log's name: two daemons (or two loads in one) can be
    // rejected within the same millisecond.
    static SEQUENCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pid = std::process::id();
    let path = log_dir().join(format!("verifier-{safe}-{stamp}-{pid}-{n}.log"));
    fs::write(&path, log).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The rejection in an aya program error, if the kernel's verifier (rather
/// than, say, a missing capability) refused the program. Without the
/// program's name, the one of `object` whose instructions the log shows.
pub fn rejection(
    program: Option<&str>,
    object: &[u8],
    err: &aya::programs::ProgramError,
) -> Option<Rejection> {
    let aya::programs::ProgramError::LoadError {
        io_error,
        verifier_log,
    } = err
    else {
        return None;
    };
    let log = verifier_log.to_string();
    if log.trim().is_empty() {
        // EPERM and the like: no verifier involved.
        return None;
    }
    let found = program.is_none().then(|| identify(object, &log)).flatten();
    Some(Rejection::new(
        program.or(found.as_deref()),
        io_error.to_string(),
        &log,
    ))
}

/// `(index, opcode)` of each instruction the log prints (`12: (bf) r1 = r6`).
fn printed_instructions(log: &str) -> Vec<(usize, u8)> {
    log.lines()
        .filter_map(|line| {
            let (index, rest) = line.split_once(": (")?;
            let index = index.parse().ok()?;
            let code = u8::from_str_radix(rest.get(..2)?, 16).ok()?;
            Some((index, code))
        })
        .collect()
}

/// The program of `object` whose instructions are the ones a log shows, if
/// exactly one fits: aya's load error does not say which program it was.
pub fn identify(object: &[u8], log: &str) -> Option<String> {
    let printed = printed_instructions(log);
    if printed.is_empty() {
        return None;
    }
    let mut obj = Object::parse(object).ok()?;
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    // Subprograms go after the program, as in the load.
    obj.relocate_calls(&text_sections).ok()?;
    let mut fits = obj.programs.iter().filter(|(_, p)| {
        let insns = &obj.functions[&p.function_key()].instructions;
        printed
            .iter()
            .all(|(i, code)| insns.get(*i).is_some_and(|insn| insn.code == *code))
    });
    match (fits.next(), fits.next()) {
        (Some((name, _)), None) => Some(name.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// imds_classify's measurement load on 6.18.44 (BPF_LOG_STATS).
    const STATS_6_18: &str = "verification time 35212 usec
stack depth 336+0+144
processed 80150 insns (limit 1000000) max_states_per_insn 15 total_states 2249 peak_states 1031 mark_read 0
";

    /// 5.10 prints the same fields, mark_read included.
    const STATS_5_10: &str = "verification time 912 usec
stack depth 200+0
processed 390 insns (limit 1000000) max_states_per_insn 1 total_states 14 peak_states 14 mark_read 5
";

    /// Before 5.2: one line, no states.
    const STATS_4_19: &str = "processed 95 insns (limit 131072), stack depth 0\n";

    /// A rejection on 6.18.44, log level 1|4 (from a 3-instruction program).
    const INVALID_ACCESS: &str = "0: R1=ctx() R10=fp0
0: (b7) r1 = 0                        ; R1=0
1: (79) r0 = *(u64 *)(r1 +0)
R1 invalid mem access 'scalar'
verification time 38 usec
stack depth 0
processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
";

    /// The end of the classifier's rejection on 6.18.44 (fc-v1272), with
    /// line info: the verifier gave up, not at a bad instruction.
    const TOO_LARGE: &str = "\
; let byte = unsafe { *ptr }; @ scan.rs:88
4321: (71) r3 = *(u8 *)(r2 +0)        ; R2_w=pkt(id=0,off=54,r=55) R3_w=scalar(smin=0,smax=255)
4322: (15) if r3 == 0xd goto pc+12    ; R3_w=scalar(smin=0,smax=255)
BPF program is too large. Processed 1000001 insn
verification time 5329173 usec
stack depth 336+0+144
processed 1000001 insns (limit 1000000) max_states_per_insn 35 total_states 21862 peak_states 3019 mark_read 40
";

    #[test]
    fn stats_of_each_kernel_generation() {
        assert_eq!(
            parse_stats(STATS_6_18),
            Stats {
                processed_insns: Some(80150),
                insn_limit: Some(1_000_000),
                max_states_per_insn: Some(15),
                total_states: Some(2249),
                peak_states: Some(1031),
                mark_read: Some(0),
                verification_us: Some(35212),
                stack_depth: Some("336+0+144".to_owned()),
            }
        );
        let old = parse_stats(STATS_5_10);
        assert_eq!(old.processed_insns, Some(390));
        assert_eq!(old.mark_read, Some(5));
        assert_eq!(old.verification_us, Some(912));

        // Missing fields stay None; the trailing comma does not hide the limit.
        let ancient = parse_stats(STATS_4_19);
        assert_eq!(ancient.processed_insns, Some(95));
        assert_eq!(ancient.insn_limit, Some(131_072));
        assert_eq!(ancient.total_states, None);
        assert_eq!(ancient.verification_us, None);

        assert_eq!(parse_stats(""), Stats::default());
        // Instruction text that merely mentions the words is not a summary.
        assert_eq!(
            parse_stats("12: (b7) r1 = 0 ; processed\n").processed_insns,
            None
        );
    }

    #[test]
    fn rejection_summary_names_reason_instruction_and_source() {
        assert_eq!(
            summarize(INVALID_ACCESS),
            Summary {
                processed_insns: Some(2),
                instruction: Some("1: (79) r0 = *(u64 *)(r1 +0)".to_owned()),
                source: None,
                reason: Some("R1 invalid mem access 'scalar'".to_owned()),
            }
        );
        let large = summarize(TOO_LARGE);
        assert_eq!(
            large.reason.as_deref(),
            Some("BPF program is too large. Processed 1000001 insn")
        );
        assert_eq!(large.processed_insns, Some(1_000_001));
        // The registers after "  ;" are left out.
        assert_eq!(
            large.instruction.as_deref(),
            Some("4322: (15) if r3 == 0xd goto pc+12")
        );
        assert_eq!(
            large.source.as_deref(),
            Some("let byte = unsafe { *ptr }; @ scan.rs:88")
        );

        // Only the summary lines, or nothing: no reason to make up.
        assert_eq!(summarize(STATS_6_18).reason, None);
        assert_eq!(summarize(STATS_6_18).processed_insns, Some(80150));
        assert_eq!(summarize(""), Summary::default());
    }

    #[test]
    fn long_lines_are_clipped() {
        let log = format!("R1 {}\n", "x".repeat(1000));
        let reason = summarize(&log).reason.unwrap();
        assert!(reason.len() <= MAX_PART + 3, "{}", reason.len());
        assert!(reason.ends_with("..."));
        assert!(is_instruction("4322: (15) if r3 == 0xd goto pc+12"));
        assert!(!is_instruction("0: R1=ctx() R10=fp0"));
        assert!(!is_instruction("func#0 @0"));
    }

    #[test]
    fn rejection_is_one_line_with_program_kernel_reason_and_log() {
        let rejection = Rejection {
            program: Some("imds_classify".to_owned()),
            kernel: "6.18.44-fc-v1272".to_owned(),
            error: "Argument list too long (os error 7)".to_owned(),
            summary: summarize(TOO_LARGE),
            log: Ok(PathBuf::from(
                "/run/imds-monitor/verifier-imds_classify-20250101T000000.000Z.log",
            )),
        };
        assert_eq!(
            rejection.to_string(),
            "imds_classify rejected by the verifier of Linux 6.18.44-fc-v1272: BPF program is \
             too large. Processed 1000001 insn (processed 1,000,001 insns; last insn 4322: (15) \
             if r3 == 0xd goto pc+12; source: let byte = unsafe { *ptr }; @ scan.rs:88); whole \
             log: /run/imds-monitor/verifier-imds_classify-20250101T000000.000Z.log"
        );
        let unnamed = Rejection {
            program: None,
            summary: Summary::default(),
            log: Err("read-only file system".to_owned()),
            ..rejection
        };
        assert_eq!(
            unnamed.to_string(),
            "a program rejected by the verifier of Linux 6.18.44-fc-v1272: Argument list too \
             long (os error 7) (the log is empty); the log could not be saved: read-only file \
             system"
        );
    }

    #[test]
    fn report_totals_largest_and_budget() {
        let program = |name: &str, insns: u32, us: u64| ProgramStats {
            name: name.to_owned(),
            kind: "sched_cls",
            stats: Stats {
                processed_insns: Some(insns),
                verification_us: Some(us),
                ..Stats::default()
            },
            error: None,
        };
        let report = Report::new(
            "6.18.44".to_owned(),
            vec![
                program("imds_responses", 19_862, 9_700),
                program("imds_classify", 200_001, 995_000),
            ],
        );
        assert_eq!(report.total_verification_us, 1_004_700);
        assert!(report.total() > BUDGET_TOTAL);
        assert_eq!(report.largest().unwrap().name, "imds_classify");
        let over: Vec<&str> = report.over_budget().map(|p| p.name.as_str()).collect();
        assert_eq!(over, ["imds_classify"]);
        // Sorted by name; the table marks what is over budget.
        assert_eq!(report.programs[0].name, "imds_classify");
        let table = report.table();
        assert!(table.contains("200,001 !"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("total") && l.ends_with("1004.7 ms")),
            "{table}"
        );

        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["programs"][1]["name"], "imds_responses");
        assert_eq!(json["programs"][1]["type"], "sched_cls");
        assert_eq!(json["programs"][1]["processed_insns"], 19_862);
        assert_eq!(json["programs"][1]["total_states"], serde_json::Value::Null);
        assert_eq!(json["budget_insns"], 200_000);
        assert!(json.get("rejected").is_none());
    }

    #[test]
    fn printed_instructions_identify_a_program() {
        assert_eq!(printed_instructions(INVALID_ACCESS), [(0, 0xb7), (1, 0x79)]);
        assert_eq!(
            printed_instructions(TOO_LARGE),
            [(4321, 0x71), (4322, 0x15)]
        );
        // Level 2's liveness lines and state lines are not instructions.
        assert!(
            printed_instructions("      0: .......... (18) r0 = 0x1\n0: R1=ctx()\n").is_empty()
        );
        assert_eq!(identify(b"not an object", INVALID_ACCESS), None);
        assert_eq!(identify(b"", STATS_6_18), None);
    }

    /// What `run` and `check` print: one line for the rejection, the hint
    /// after it, and no kernel version blamed on a supported kernel.
    #[test]
    fn load_error_of_a_rejection_is_one_line_and_keeps_the_log() {
        let err = aya::programs::ProgramError::LoadError {
            io_error: io::Error::from_raw_os_error(libc::EACCES),
            verifier_log: aya_obj::VerifierLog::new(INVALID_ACCESS.to_owned()),
        };
        let err = crate::kernel::explain_program_load_error("imds_classify", err);
        let text = format!("{err:#}");
        let (line, hint) = text.split_once("\nhint: ").expect("a hint");
        assert!(!line.contains('\n') && !hint.contains('\n'), "{text}");
        assert!(
            line.starts_with(
                "loading the eBPF programs failed: imds_classify rejected by the verifier of Linux "
            ),
            "{line}"
        );
        assert!(line.contains(": R1 invalid mem access 'scalar' (processed 2 insns; last insn 1: (79) r0 = *(u64 *)(r1 +0)); whole log: "), "{line}");
        let supported = aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(5, 10, 0));
        if supported {
            assert!(
                !text.contains("5.17") && !text.contains("or newer"),
                "{text}"
            );
        }
        let failure = err.downcast_ref::<LoadFailure>().expect("a LoadFailure");
        let path = failure.rejection.log.clone().expect("log written");
        assert!(
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("verifier-imds_classify-")
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), INVALID_ACCESS);
        fs::remove_file(path).unwrap();

        // No log (EPERM): no rejection, the old hints.
        let denied = aya::programs::ProgramError::LoadError {
            io_error: io::Error::from_raw_os_error(libc::EPERM),
            verifier_log: aya_obj::VerifierLog::new(String::new()),
        };
        assert!(rejection(Some("x"), b"", &denied).is_none());
        let text = format!(
            "{:#}",
            crate::kernel::explain_program_load_error("x", denied)
        );
        assert!(text.contains("hint: run as root"), "{text}");
    }

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(41_230), "41,230");
        assert_eq!(thousands(1_000_001), "1,000,001");
    }

    #[test]
    fn prog_load_attr_has_the_kernel_layout() {
        use std::mem::offset_of;
        assert_eq!(offset_of!(ProgLoad, prog_name), 48);
        assert_eq!(offset_of!(ProgLoad, expected_attach_type), 68);
        assert_eq!(offset_of!(ProgLoad, prog_btf_fd), 72);
        assert_eq!(offset_of!(ProgLoad, func_info), 80);
        assert_eq!(offset_of!(ProgLoad, line_info), 96);
        assert_eq!(offset_of!(ProgLoad, attach_prog_fd), 112);
        // No trailing padding: every byte the kernel reads is ours.
        assert_eq!(offset_of!(ProgLoad, core_relo_cnt), 116);
        assert_eq!(size_of::<ProgLoad>(), 120);
        assert_eq!(size_of::<GetFdById>(), 12);
        assert_eq!(name16("a_name_longer_than_sixteen")[15], 0);
    }
}
