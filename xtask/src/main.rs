//! Developer tasks of imds-monitor, run as `cargo xtask <task>`.

mod cmd;
mod run;
mod setup;
mod test;

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
  cargo xtask test                   fmt, clippy and all tests (as root)
  cargo xtask test -- -p imds-monitor-common
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

    /// Setup, then `cargo fmt --check`, clippy (-D warnings) and `cargo test` (needs root).
    #[command(after_help = "\
Runs every step even when one fails, then prints a summary and, last, a line
`N passed, M failed` (`, K skipped` for ignored tests) summed over all test
binaries. Fails if any step failed or if no test was executed.
The integration tests create network namespaces: run as root.

Examples:
  cargo xtask test
  cargo xtask test -- -p imds-monitor-common
  cargo xtask test -- some_test_name -- --nocapture
  cargo xtask test --no-setup")]
    Test(test::TestArgs),

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
}

fn main() -> ExitCode {
    cmd::install_sigint_handler();
    let cli = Cli::parse();
    let result = match &cli.task {
        Task::Setup(args) => setup::setup(args),
        Task::Test(args) => test::test(args),
        Task::Demo(args) => run::demo(args),
        Task::Bench(args) => run::bench(args),
        Task::Run(args) => run::run(args),
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
}
