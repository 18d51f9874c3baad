//! Process lifecycle for the daemon's process cache: exec (with the program
//! path and arguments read from the caller's memory before the exec
//! replaces it), fork and exit. Stable tracepoints only; field offsets that
//! differ across kernels come from the tracepoint's format file, via a global.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns,
        },
    },
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use imds_monitor_common::event::{ARGS_CAP, ExecEvent, MAX_ARGS, TaskEvent, exec_flag, kind, stat};

use crate::{
    copy,
    exempt::{EXEMPT_EXECS, PROC_EXEMPT},
    maps::{EVENTS, count, submit_flags},
};

/// Offset of `child_pid` in sched_process_fork's record (set by the loader
/// from the format file; 44 on older kernels, 20 since comms became __data_loc).
#[unsafe(no_mangle)]
static FORK_CHILD_PID_OFFSET: u32 = 44;

/// Id (inode) and depth below the cgroup2 root of `--cgroup`; id 0 follows
/// every task. The socket hooks are attached there, so both see one subtree.
#[unsafe(no_mangle)]
static WATCHED_CGROUP_ID: u64 = 0;
#[unsafe(no_mangle)]
static WATCHED_CGROUP_LEVEL: u32 = 0;

/// Bytes of one argument read at most.
const ARG_WINDOW: usize = 256;

/// Arguments captured at sys_enter_execve, by thread id, until the exec succeeds.
#[map]
static PENDING_EXECS: LruHashMap<u32, ExecEvent> = LruHashMap::with_max_entries(4096, 0);

/// Staging for a new PENDING_EXECS value (too large for the stack).
#[map]
static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn followed() -> bool {
    let id = unsafe { core::ptr::read_volatile(&WATCHED_CGROUP_ID) };
    if id == 0 {
        return true;
    }
    let level = unsafe { core::ptr::read_volatile(&WATCHED_CGROUP_LEVEL) };
    unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) == id }
}

/// sys_enter_execve: `filename` at 16, `argv` at 24 (syscall records are stable).
#[tracepoint(category = "syscalls", name = "sys_enter_execve")]
pub fn imds_execve(ctx: TracePointContext) -> u32 {
    if followed() {
        let _ = capture_exec(&ctx);
    }
    0
}

#[inline(always)]
fn capture_exec(ctx: &TracePointContext) -> Result<(), i32> {
    let filename: *const u8 = unsafe { ctx.read_at(16)? };
    let argv: *const *const u8 = unsafe { ctx.read_at(24)? };
    let exec = EXEC_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    let exec = unsafe { &mut *exec };
    exec.kind = kind::EXEC;
    exec.flags = 0;
    exec.argc = 0;
    exec.args_len = 0;
    // Zeroed whole: the path is also a map key (EXEMPT_EXECS). The field
    // is 8-byte aligned in ExecEvent, whose map value is.
    unsafe { copy::zero(&mut exec.filename) };
    if unsafe { bpf_probe_read_user_str_bytes(filename, &mut exec.filename) }.is_err() {
        exec.filename[0] = 0;
    }
    let mut offset = 0usize;
    for i in 0..MAX_ARGS {
        let arg: *const u8 = match unsafe { bpf_probe_read_user(argv.add(i)) } {
            Ok(p) => p,
            Err(_) => {
                exec.flags |= exec_flag::ARGS_UNREADABLE;
                break;
            }
        };
        if arg.is_null() {
            break;
        }
        // A fixed-size window at a bounded offset: the verifier checks
        // offset + window against the buffer without relating the two.
        if i == MAX_ARGS - 1 || offset > ARGS_CAP - ARG_WINDOW {
            exec.flags |= exec_flag::ARGS_TRUNCATED;
            break;
        }
        let start = offset & (ARGS_CAP - 1);
        let Some(dest) = exec.args.get_mut(start..start + ARG_WINDOW) else {
            break;
        };
        match unsafe { bpf_probe_read_user_str_bytes(arg, dest) } {
            Ok(read) => {
                // read excludes the NUL the helper wrote after it.
                offset = start + read.len() + 1;
                exec.argc += 1;
                if read.len() + 1 == ARG_WINDOW {
                    exec.flags |= exec_flag::ARGS_TRUNCATED;
                }
            }
            Err(_) => {
                exec.flags |= exec_flag::ARGS_UNREADABLE;
                break;
            }
        }
    }
    exec.args_len = offset.min(ARGS_CAP) as u16;
    let tid = bpf_get_current_pid_tgid() as u32;
    PENDING_EXECS.insert(&tid, &*exec, 0).map_err(|e| e as i32)
}

/// sched_process_exec: the exec succeeded; send what sys_enter_execve saw.
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn imds_exec(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let Some(pending) = PENDING_EXECS.get_ptr_mut(&tid) else {
        return 0;
    };
    // Completed in place, then copied out by the kernel (bpf_ringbuf_output):
    // a 1.3 KB struct copy in eBPF is a byte-at-a-time loop.
    let event = unsafe { &mut *pending };
    let uid_gid = bpf_get_current_uid_gid();
    event.tgid = (pid_tgid >> 32) as u32;
    event.pid = tid;
    event.uid = uid_gid as u32;
    event.gid = (uid_gid >> 32) as u32;
    event.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    event.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    copy::current_comm(&mut event.comm);
    event._pad = 0;
    // Executable exceptions: decided now, before the program runs.
    let bits = unsafe { EXEMPT_EXECS.get(&event.filename) }
        .copied()
        .unwrap_or(0);
    let _ = PROC_EXEMPT.insert(&event.tgid, &bits, 0);
    if EVENTS.output::<ExecEvent>(&*event, submit_flags()).is_err() {
        count(stat::LOST_EVENTS);
    }
    let _ = PENDING_EXECS.remove(&tid);
    0
}

/// sched_process_fork: the current process (the parent) made a new task.
#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn imds_fork(ctx: TracePointContext) -> u32 {
    if !followed() {
        return 0;
    }
    let offset = unsafe { core::ptr::read_volatile(&FORK_CHILD_PID_OFFSET) } as usize;
    let Ok(child) = (unsafe { ctx.read_at::<i32>(offset & 0xff) }) else {
        return 0;
    };
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // A child runs its parent's program until it execs. A parent without an
    // entry passes on none: an entry left under the child's (reused) pid by a
    // process that is gone must not exempt it.
    match unsafe { PROC_EXEMPT.get(&parent) }.copied() {
        Some(bits) => {
            let _ = PROC_EXEMPT.insert(&(child as u32), &bits, 0);
        }
        None => {
            let _ = PROC_EXEMPT.remove(&(child as u32));
        }
    }
    task_event(kind::FORK, parent, child as u32);
    0
}

/// sched_process_exit: a thread ended; reported when it is the process itself.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn imds_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == pid_tgid as u32 && followed() {
        // Its exemption ends with it (the map stays small, and a reused pid
        // starts without one).
        let _ = PROC_EXEMPT.remove(&tgid);
        task_event(kind::EXIT, tgid, 0);
    }
    0
}

#[inline(always)]
fn task_event(kind: u8, tgid: u32, child: u32) {
    let event = TaskEvent {
        kind,
        _pad: 0,
        _pad1: 0,
        tgid,
        child,
        _pad2: 0,
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
    };
    if EVENTS.output::<TaskEvent>(&event, submit_flags()).is_err() {
        count(stat::LOST_EVENTS);
    }
}
