//! The parts of `imds-bench` (tests/src/bin/imds-bench.rs): load generators,
//! readers of kernel and /proc statistics, the phases, and the report.

pub mod bpfmaps;
pub mod daemon;
pub mod isolated;
pub mod load;
pub mod phases;
pub mod procfs;
pub mod progstats;
pub mod report;
pub mod report_load;
pub mod verify;
pub mod worker;
pub mod workloads;
