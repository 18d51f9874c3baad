//! The guest's initramfs: static busybox, our `/init` and the few modules the
//! kernel needs before it can mount the host's root (virtio, virtiofs,
//! overlay), written as a newc cpio archive directly (no cpio, no mknod, no
//! staging dir). Uncompressed: every kernel reads that, and it is small.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use super::kernels::Kernel;
use crate::cmd;

/// The guest's `/init` (busybox sh).
const INIT: &str = include_str!("../../vm/init");

/// Modules `/init` loads, by name; their dependencies come along. On kernels
/// that build one in, it is skipped.
const BOOT_MODULES: &[&str] = &["virtio_pci", "virtio_console", "virtiofs", "overlay"];

pub const BUSYBOX: &str = "/bin/busybox";

/// Builds the initramfs for `kernel`.
pub fn build(kernel: &Kernel) -> anyhow::Result<Vec<u8>> {
    let busybox = fs::read(BUSYBOX).with_context(|| format!("cannot read {BUSYBOX}"))?;
    if !is_static_elf(&busybox) {
        bail!("{BUSYBOX} is not statically linked: install busybox-static");
    }
    let dir = kernel.module_dir();
    let read = |name: &str| {
        fs::read_to_string(dir.join(name))
            .with_context(|| format!("cannot read {}", dir.join(name).display()))
    };
    // modules.builtin is missing on kernels without any builtin module list.
    let index = ModuleIndex::parse(
        &read("modules.dep")?,
        &read("modules.builtin").unwrap_or_default(),
    );
    let modules = index
        .load_order(BOOT_MODULES)
        .with_context(|| format!("kernel {}", kernel.version))?;

    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "mnt", "mods"] {
        cpio.dir(d);
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    cpio.char_dev("dev/console", 0o600, 5, 1);
    cpio.char_dev("dev/null", 0o666, 1, 3);
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.file("init", 0o755, INIT.as_bytes());
    let mut order = String::new();
    for rel in &modules {
        let (name, data) = decompress(&dir.join(rel))?;
        cpio.file(&format!("mods/{name}"), 0o644, &data);
        order.push_str(&name);
        order.push('\n');
    }
    cpio.file("mods/order", 0o644, order.as_bytes());
    Ok(cpio.finish())
}

/// A module file's bytes, uncompressed (busybox insmod takes plain `.ko`),
/// and its file name without the compression suffix.
fn decompress(path: &Path) -> anyhow::Result<(String, Vec<u8>)> {
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("module path")?;
    let tool = [(".xz", "xz"), (".zst", "zstd"), (".gz", "gzip")]
        .into_iter()
        .find(|(ext, _)| file.ends_with(ext));
    let Some((ext, tool)) = tool else {
        let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        return Ok((file.to_owned(), data));
    };
    let mut c = Command::new(tool);
    c.args(["-d", "-c", "-q"]).arg(path);
    let out = cmd::probe(&mut c)
        .filter(|o| o.status.success())
        .with_context(|| format!("`{}` failed", cmd::display(&c)))?;
    Ok((file.trim_end_matches(ext).to_owned(), out.stdout))
}

/// Whether a 64-bit little-endian ELF has no program interpreter
/// (PT_INTERP), i.e. runs without a dynamic loader.
pub fn is_static_elf(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    };
    // ELF magic, ELFCLASS64, ELFDATA2LSB.
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum).all(|i| u32_at(phoff + i * phentsize).is_some_and(|p_type| p_type != PT_INTERP))
}

/// A kernel's `modules.dep` and `modules.builtin`, by module name.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// name -> (path relative to the module dir, paths of its dependencies)
    deps: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

/// `fuse` for `kernel/fs/fuse/fuse.ko.xz`; `-` and `_` are the same to the kernel.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

impl ModuleIndex {
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Self {
        let deps = modules_dep
            .lines()
            .filter_map(|l| {
                let (module, deps) = l.split_once(':')?;
                let module = module.trim();
                let deps = deps.split_whitespace().map(str::to_owned).collect();
                Some((module_name(module), (module.to_owned(), deps)))
            })
            .collect();
        let builtin = modules_builtin
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect();
        Self { deps, builtin }
    }

    /// Module files to load for `wanted`, each after its dependencies, once.
    pub fn load_order(&self, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in wanted {
            self.visit(&module_name(name), &mut seen, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        if !seen.insert(name.to_owned()) {
            return Ok(());
        }
        let Some((path, deps)) = self.deps.get(name) else {
            if self.builtin.contains(name) {
                return Ok(());
            }
            bail!("module {name} is neither in modules.dep nor built in");
        };
        for dep in deps {
            self.visit(&module_name(dep), seen, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
}

/// A newc ("070701") cpio archive, the format the kernel unpacks as initramfs.
#[derive(Debug, Default)]
pub struct Cpio {
    buf: Vec<u8>,
    inode: u32,
}

impl Cpio {
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, 2, (0, 0), &[]);
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | perm, 1, (0, 0), data);
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, 0o020_000 | perm, 1, (major, minor), &[]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.buf
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.inode += 1;
        let size = u32::try_from(data.len()).expect("cpio member under 4 GiB");
        let namesize = u32::try_from(name.len() + 1).expect("short name");
        let fields = [
            self.inode, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

/// Path of the initramfs for a run: written next to the run's other files.
pub fn write(kernel: &Kernel, run_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = run_dir.join("initramfs.cpio");
    fs::write(&path, build(kernel)?).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP_6_1: &str = "\
kernel/fs/fuse/fuse.ko:
kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko
kernel/fs/overlayfs/overlay.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko
";

    #[test]
    fn dependencies_load_first_and_once() {
        let idx = ModuleIndex::parse(DEP_6_1, "");
        let order = idx.load_order(BOOT_MODULES).unwrap();
        let names: Vec<_> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio_ring",
                "virtio",
                "virtio_pci",
                "virtio_console",
                "fuse",
                "virtiofs",
                "overlay"
            ]
        );
    }

    #[test]
    fn builtin_modules_are_skipped() {
        // 6.12 cloud: virtio and virtiofs are built in, overlay is a module.
        let idx = ModuleIndex::parse(
            "kernel/fs/overlayfs/overlay.ko.xz:\n",
            "kernel/fs/fuse/fuse.ko\nkernel/fs/fuse/virtiofs.ko\nkernel/drivers/virtio/virtio.ko\n\
             kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/char/virtio_console.ko\n",
        );
        assert_eq!(
            idx.load_order(BOOT_MODULES).unwrap(),
            ["kernel/fs/overlayfs/overlay.ko.xz"]
        );
    }

    #[test]
    fn unknown_module_is_an_error() {
        let idx = ModuleIndex::parse(DEP_6_1, "");
        assert!(idx.load_order(&["9p"]).is_err());
        // Names with - and _ are the same module.
        assert_eq!(idx.load_order(&["virtio_rng"]).unwrap().len(), 3);
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/fs/fuse/virtiofs.ko.xz"), "virtiofs");
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko"),
            "virtio_rng"
        );
        assert_eq!(module_name("overlay"), "overlay");
    }

    #[test]
    fn cpio_newc_layout() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"hi\n");
        let out = c.finish();
        let header = std::str::from_utf8(&out[..110]).unwrap();
        assert_eq!(
            header,
            "070701\
             00000001000081ED000000000000000000000001000000000000000300000000\
             00000000000000000000000000000005\
             00000000"
        );
        // 110 header + "init\0" = 115, padded to 116; data 3 padded to 4.
        assert_eq!(&out[110..116], b"init\0\0");
        assert_eq!(&out[116..120], b"hi\n\0");
        assert!(std::str::from_utf8(&out[120..126]).unwrap() == "070701");
        assert_eq!(out.len() % 4, 0);
        assert!(out.windows(11).any(|w| w == b"TRAILER!!!\0"));
    }

    #[test]
    fn cpio_device_node() {
        let mut c = Cpio::default();
        c.char_dev("dev/console", 0o600, 5, 1);
        let out = c.finish();
        let field = |i: usize| std::str::from_utf8(&out[6 + 8 * i..14 + 8 * i]).unwrap();
        assert_eq!(field(1), "00002180"); // S_IFCHR | 0600
        assert_eq!((field(9), field(10)), ("00000005", "00000001"));
    }

    #[test]
    fn static_elf_detection() {
        // Minimal ELF64 LE header with one program header at 0x40.
        let mut elf = vec![0u8; 0x40 + 0x38];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[0x40..0x44].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        assert!(is_static_elf(&elf));
        elf[0x40..0x44].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        assert!(!is_static_elf(&elf));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        // Truncated program headers are not trusted.
        elf[0x40..0x44].copy_from_slice(&1u32.to_le_bytes());
        assert!(!is_static_elf(&elf[..0x42]));
    }
}
