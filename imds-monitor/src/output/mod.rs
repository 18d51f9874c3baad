//! Events as Elastic Common Schema JSON lines, and where they go: the event
//! loop queues lines ([`queue`]); a thread of their own writes them
//! ([`writer`]) to stdout or a rotating file ([`sink`]).

pub mod ecs;
pub mod queue;
pub mod runtime_fields;
pub mod sink;
pub mod traffic;
pub mod writer;
