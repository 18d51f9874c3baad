//! Events as Elastic Common Schema JSON lines, and where they go.

pub mod ecs;
pub mod sink;
pub mod traffic;
