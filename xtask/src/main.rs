//! Developer tasks of imds-monitor, run as `cargo xtask <task>`.

mod cmd;
mod dist;
mod run;
mod setup;
mod test;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks of imds-monitor: install the toolchain, test, demo, benchmark, run",
    long_about = None,
    after_help = "\
Every task prints each command before running it (`$ cargo test ...`) and exits
with the exit code of the first command that failed.

Examples:
  cargo xtask setup                  install what is missing (apt, rust-src, bpf-linker)
  cargo xtask setup --check          only report what is missing
  cargo xtask test                   fmt, clippy and all tests (as root), also on other kernels
  cargo xtask test --no-kernels      the same on this machine's kernel only
  cargo xtask test -- -p imds-monitor-common
  cargo xtask kernels -- uname -r    a command in VMs of Debian's 5.10, 6.1 and 6.12 kernels
  cargo xtask demo                   the monitor against a mock IMDS in network namespaces
  cargo xtask bench -- --help        arguments after `--` go to imds-bench
  cargo xtask run                    imds-monitor on EC2 (--mode alert), else the demo
  cargo xtask run -- --mode block    imds-monitor run --mode block on EC2"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Check for, and install when missing, everything the build and tests need.
    #[command(after_help = "\
Checks, one line each: the nightly toolchain and its LLVM version N; Debian
packages llvm-N-dev libpolly-N-dev zlib1g-dev libzstd-dev nftables iproute2
curl; rust-src for nightly; bpf-linker 0.13.0 built against LLVM N.

As root it installs what is missing (apt-get update runs only then, and
`cargo install bpf-linker` takes several minutes). As another user, or with
--check, it prints the command that installs each missing piece and exits 1.
When nothing is missing it runs in well under a second and calls neither
cargo nor apt.

Examples:
  cargo xtask setup
  cargo xtask setup --check")]
    Setup(setup::SetupArgs),

    /// Setup, fmt, clippy, `cargo test`, then the kernel matrix (needs root).
    #[command(after_help = "\
Runs every step even when one fails, then prints a summary and, last, a line
`N passed, M failed` (`, K skipped` for ignored tests) summed over all test
binaries. Fails if any step failed or if no test was executed.
The integration tests create network namespaces: run as root.

Then `cargo xtask dist` builds the static binaries, packages and OCI image and
the tests of those artifacts run (--no-dist skips both).

The kernel matrix (see `cargo xtask kernels --help`) then boots Debian's 5.10,
6.1 and 6.12 cloud kernels under qemu, one after another, and runs in each
`imds-monitor check` and the integration test binaries classify, attribution,
enforce, diagnostics, lifecycle, fail_closed and verifier_budget, built on this
host. Their results count in
the closing line, and a table shows each kernel's boot and total seconds and
its passed and failed tests. About 12 minutes on 2 cores. If the matrix cannot
run (qemu not installable, no kernel downloadable) the step fails.

Examples:
  cargo xtask test
  cargo xtask test -- -p imds-monitor-common
  cargo xtask test -- some_test_name -- --nocapture
  cargo xtask test --no-setup
  cargo xtask test --no-kernels      only the host: skip the kernel matrix
  cargo xtask test --kernels 6.1     the matrix with one kernel")]
    Test(test::TestArgs),

    /// Boot Debian's cloud kernels under qemu and run a command in each.
    #[command(after_help = "\
Boots each selected kernel (5.10 bullseye, 6.1 bookworm, 6.12 trixie: the
newest cloud-amd64 package of each line) one after another under
qemu-system-x86_64 with TCG (2 CPUs, 2 GiB, no network device), with this
machine's root shared read-only over virtiofs and a tmpfs overlay on top, so
the guest sees the same files and programs but its writes stay in its RAM.
cgroup2, bpffs and tracefs are mounted, /run and /tmp are fresh tmpfs, and
the kernel package's own modules are at /lib/modules/VERSION (modprobe
works). COMMAND runs as root with `/bin/sh -c` from the workspace root; its
output is streamed. Then a table: kernel, seconds from qemu's start to the
command, total seconds, exit status. Exits 1 if any command failed or a VM
gave no exit status (timeout, boot failure). The guest sees the host's files
live: one replaced on the host while a VM runs (cargo build does that) fails
there with \"Stale file handle\"; `cargo xtask test` runs copies.

Needs root. Installs missing packages with apt-get (qemu-system-x86,
busybox-static, kmod, xz-utils, zstd; virtiofsd comes with qemu-system-common).
Kernels are downloaded through a private apt configuration (the system's
sources are not touched) and kept under target/kernel-matrix/; package lists
are refreshed weekly or with --update.

Examples:
  cargo xtask kernels -- uname -r
  cargo xtask kernels --kernel 5.10 -- 'modprobe veth && echo ok'
  cargo xtask kernels --kernel 6.1,6.12 --timeout 300 -- target/debug/imds-monitor check")]
    Kernels(vm::KernelsArgs),

    /// Setup, release build, then run the demo (target/release/imds-demo).
    #[command(after_help = "\
Builds imds-monitor and imds-sandbox in release mode and runs imds-demo with
IMDS_MONITOR_BIN set to the built imds-monitor. Arguments go to imds-demo.

Examples:
  cargo xtask demo
  cargo xtask demo -- --help")]
    Demo(run::PassArgs),

    /// Setup, release build, then run the benchmark (target/release/imds-bench).
    #[command(after_help = "\
Builds imds-monitor and imds-sandbox in release mode and runs imds-bench with
IMDS_MONITOR_BIN set to the built imds-monitor. Arguments go to imds-bench.

Examples:
  cargo xtask bench
  cargo xtask bench -- --phase workloads
  cargo xtask bench -- --soak --soak-duration 180
  cargo xtask bench -- --help")]
    Bench(run::PassArgs),

    /// Setup, release build, then imds-monitor on an EC2 instance, else the demo.
    #[command(after_help = "\
EC2 is detected from local files only, without sending any packet:
/sys/class/dmi/id/board_vendor or sys_vendor or
/sys/devices/virtual/dmi/id/bios_vendor containing \"Amazon EC2\" (Nitro), or
/sys/hypervisor/uuid starting with \"ec2\" (Xen). On EC2 it runs
`target/release/imds-monitor run ARGS` (ARGS default to `--mode alert`);
elsewhere it runs the demo and says why.

Examples:
  cargo xtask run
  cargo xtask run -- --mode block
  cargo xtask run --not-ec2          the demo, even on EC2
  cargo xtask run --ec2 -- --help    imds-monitor run --help, anywhere")]
    Run(run::RunArgs),

    /// Static musl binaries (x86_64, aarch64), .deb, .rpm and an OCI image into target/dist/.
    #[command(after_help = "\
Needs cargo-deb and cargo-generate-rpm (`cargo install cargo-deb
cargo-generate-rpm`) for the packages; rustup targets are added when missing.

Examples:
  cargo xtask dist
  cargo xtask dist --arch x86_64 --binaries-only")]
    Dist(dist::DistArgs),
}

fn main() -> ExitCode {
    cmd::install_sigint_handler();
    let cli = Cli::parse();
    let result = match &cli.task {
        Task::Setup(args) => setup::setup(args),
        Task::Test(args) => test::test(args),
        Task::Kernels(args) => vm::kernels(args),
        Task::Demo(args) => run::demo(args),
        Task::Bench(args) => run::bench(args),
        Task::Run(args) => run::run(args),
        Task::Dist(args) => dist::dist(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(cmd::Silent(code)) = e.downcast_ref::<cmd::Silent>() {
                return exit_code(*code);
            }
            eprintln!("error: {e:#}");
            let code = e
                .chain()
                .find_map(|c| c.downcast_ref::<cmd::Failed>())
                .map_or(1, |f| f.code);
            exit_code(code)
        }
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn pass_through_args() {
        let cli =
            Cli::try_parse_from(["xtask", "test", "--", "-p", "x", "--", "--nocapture"]).unwrap();
        let Task::Test(t) = cli.task else { panic!() };
        assert_eq!(t.cargo_test_args, ["-p", "x", "--", "--nocapture"]);
        assert!(!t.no_setup);

        let cli = Cli::try_parse_from(["xtask", "run", "--ec2", "--", "--mode", "block"]).unwrap();
        let Task::Run(r) = cli.task else { panic!() };
        assert!(r.ec2 && !r.not_ec2);
        assert_eq!(r.args, ["--mode", "block"]);

        let cli = Cli::try_parse_from(["xtask", "demo", "--duration", "5"]).unwrap();
        let Task::Demo(d) = cli.task else { panic!() };
        assert_eq!(d.args, ["--duration", "5"]);

        assert!(Cli::try_parse_from(["xtask", "run", "--ec2", "--not-ec2"]).is_err());
    }

    #[test]
    fn kernel_args() {
        let cli = Cli::try_parse_from(["xtask", "kernels", "--", "uname", "-r"]).unwrap();
        let Task::Kernels(k) = cli.task else { panic!() };
        assert_eq!(k.kernel, ["all"]);
        assert_eq!(k.timeout, 600);
        assert_eq!(k.command, ["uname", "-r"]);

        let cli = Cli::try_parse_from([
            "xtask",
            "kernels",
            "--kernel",
            "5.10",
            "--kernel",
            "6.1,6.12",
            "--timeout",
            "60",
            "--",
            "ls",
            "-l",
        ])
        .unwrap();
        let Task::Kernels(k) = cli.task else { panic!() };
        assert_eq!(k.kernel, ["5.10", "6.1,6.12"]);
        assert_eq!(k.timeout, 60);
        assert_eq!(k.command, ["ls", "-l"]);

        assert!(Cli::try_parse_from(["xtask", "kernels"]).is_err());

        let cli =
            Cli::try_parse_from(["xtask", "test", "--kernels", "6.1", "--", "-p", "x"]).unwrap();
        let Task::Test(t) = cli.task else { panic!() };
        assert_eq!(t.kernels, "6.1");
        assert!(!t.no_kernels);
        let cli = Cli::try_parse_from(["xtask", "test", "--no-kernels"]).unwrap();
        let Task::Test(t) = cli.task else { panic!() };
        assert!(t.no_kernels);
        assert!(
            Cli::try_parse_from(["xtask", "test", "--no-kernels", "--kernels", "6.1"]).is_err()
        );
    }
}
