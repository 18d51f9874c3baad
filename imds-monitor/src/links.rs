//! Follows the watched interfaces over rtnetlink (RTNLGRP_LINK, and the
//! IPv4/IPv6 route groups when the interfaces were chosen by route).
//!
//! - An interface going down (administratively, or losing its carrier) and
//!   coming back: reported (`interface-down`, `interface-up`); the TC
//!   programs stay attached through it (TCX links and clsact filters
//!   survive a link going down).
//! - An interface deleted (`interface-down`, reason `deleted`): its TCX
//!   links, or its clsact qdisc and filters, died with the device; what was
//!   attached is forgotten. When an interface of that name appears again (a
//!   new ENI, a restarted container network; a new index), everything is
//!   attached to it at once, while it is still being set up
//!   (`interface-attached`, reason `recreated`).
//! - Without `--iface`, a route change that sends an endpoint through
//!   another interface attaches there too (`interface-attached`, reason
//!   `route`); the interfaces attached before stay attached.
//! - An attach that fails is reported (`interface-attach-failed`, an alert)
//!   and tried again at the interface's next link event and every 30 s.
//!
//! The state per interface ([`InterfaceState`]: name, index, attached, up)
//! is kept in a [`SharedStates`], readable outside the event loop; the
//! event loop also hands each change to the metrics (`run::on_links`).

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use futures_channel::mpsc;
use futures_util::{StreamExt as _, TryStreamExt as _};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkMessage, State},
};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
};

use crate::{
    interfaces::Snapshot,
    kernel::{AttachMode, Kernel},
};

/// One watched interface: what is attached where, now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceState {
    /// The interface's name (given with `--iface`, or chosen by route).
    pub name: String,
    /// Its index now; 0 while no interface of that name exists.
    pub ifindex: u32,
    /// The classifier and the response reader are attached to it.
    pub attached: bool,
    /// Administratively up and running (`IFF_UP` and `IFF_RUNNING`).
    pub up: bool,
}

/// The watched interfaces' states, shared with readers outside the event
/// loop (a metrics endpoint); written only by [`LinkWatcher`].
pub type SharedStates = Arc<Mutex<Vec<InterfaceState>>>;

/// `imds.degraded` when the netlink subscription could not be made.
pub const NOT_FOLLOWED: &str = "interfaces: link and route events could not be subscribed to \
     (netlink): an interface that is deleted and re-created, or a route to an endpoint that \
     moves, is not followed: restart the monitor after such a change";

/// A link as one RTM_NEWLINK / RTM_DELLINK (or a dump) describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFF_UP`: set up by an administrator.
    pub admin_up: bool,
    /// `IFF_RUNNING`: operationally up (carrier).
    pub running: bool,
    /// The kernel's operational state, lower case (`up`, `down`,
    /// `lowerlayerdown`, `unknown`, ...).
    pub oper_state: String,
}

impl Link {
    pub fn up(&self) -> bool {
        self.admin_up && self.running
    }

    fn from_message(msg: &LinkMessage) -> Option<Self> {
        let name = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })?;
        let oper = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::OperState(s) => Some(*s),
                _ => None,
            })
            .unwrap_or(State::Unknown);
        Some(Self {
            index: msg.header.index,
            name,
            admin_up: msg.header.flags.contains(LinkFlags::Up),
            running: msg.header.flags.contains(LinkFlags::Running),
            oper_state: oper.to_string().to_lowercase(),
        })
    }

    /// What is known of a link that is gone.
    fn gone(name: &str, index: u32) -> Self {
        Self {
            index,
            name: name.to_owned(),
            admin_up: false,
            running: false,
            oper_state: "notpresent".into(),
        }
    }
}

/// Why an interface was attached to while running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachReason {
    /// An interface of a watched name appeared again (new index).
    Recreated,
    /// The route to an endpoint moved to it.
    Route,
}

impl AttachReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recreated => "recreated",
            Self::Route => "route",
        }
    }
}

/// What happened to a watched interface: one record each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Went down, or (`deleted`) was deleted; `attached`: the programs
    /// are still attached (always, unless deleted or an attach failed).
    Down {
        link: Link,
        deleted: bool,
        attached: bool,
    },
    /// Up again (same interface: nothing had to be attached again).
    Up { link: Link, attached: bool },
    /// Attached to (again).
    Attached {
        link: Link,
        previous_index: Option<u32>,
        reason: AttachReason,
    },
    /// Attaching failed: the interface's traffic is not watched.
    AttachFailed {
        link: Link,
        reason: AttachReason,
        error: String,
    },
}

impl Change {
    /// The interface it is about.
    pub fn link(&self) -> &Link {
        match self {
            Self::Down { link, .. }
            | Self::Up { link, .. }
            | Self::Attached { link, .. }
            | Self::AttachFailed { link, .. } => link,
        }
    }

    /// Whether the programs are attached to the interface afterwards.
    pub fn attached(&self) -> bool {
        match self {
            Self::Down {
                deleted, attached, ..
            } => *attached && !deleted,
            Self::Up { attached, .. } => *attached,
            Self::Attached { .. } => true,
            Self::AttachFailed { .. } => false,
        }
    }
}

/// What the watcher needs from the kernel side (a fake in the unit tests).
pub trait Attacher {
    /// Attaches everything an interface gets.
    fn attach(&mut self, iface: &str) -> Result<()>;
    /// The interface is gone: forget what was attached to it.
    fn forget(&mut self, iface: &str);
}

/// [`Attacher`] on the real programs.
pub struct KernelAttacher<'a> {
    pub kernel: &'a mut Kernel,
    pub mode: AttachMode,
    pub passthrough: bool,
}

impl Attacher for KernelAttacher<'_> {
    fn attach(&mut self, iface: &str) -> Result<()> {
        self.kernel
            .attach_interface(iface, self.mode, self.passthrough)
    }

    fn forget(&mut self, iface: &str) {
        self.kernel.forget_interface(iface);
    }
}

/// A link event, as far as the tracker cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    New(Link),
    Del(Link),
}

/// The state machine behind [`LinkWatcher`]: link events in, changes out.
#[derive(Debug, Default)]
pub struct Tracker {
    states: SharedStates,
    /// The index a watched name had before it was deleted.
    previous: HashMap<String, u32>,
    /// "Down" changes not reported yet, and when they are due.
    held: Vec<(Instant, Change)>,
}

/// How long a link that went down may take to be deleted: its "down" is
/// reported this much later, and not at all if it was deleted meanwhile
/// (the kernel takes a link down, waits for an RCU grace period, then
/// deletes it).
pub const DOWN_GRACE: Duration = Duration::from_secs(2);

impl Tracker {
    /// Starts tracking `name` (attached at index `ifindex`, or not).
    pub fn track(&mut self, name: &str, ifindex: u32, attached: bool) {
        let mut states = self.states.lock().expect("link states lock");
        if states.iter().all(|s| s.name != name) {
            states.push(InterfaceState {
                name: name.to_owned(),
                ifindex,
                attached,
                up: true,
            });
        }
    }

    pub fn states(&self) -> Vec<InterfaceState> {
        self.states.lock().expect("link states lock").clone()
    }

    /// When the first held "down" is due (see [`DOWN_GRACE`]).
    pub fn next_due(&self) -> Option<Instant> {
        self.held.iter().map(|(due, _)| *due).min()
    }

    /// Applies a batch of events at `now`, and releases the held "downs"
    /// that are due (an empty batch only does that). A link going down is
    /// reported [`DOWN_GRACE`] later, unless it is deleted meanwhile: a
    /// deletion takes its link down first, and is reported once, as
    /// deleted.
    pub fn on_batch(
        &mut self,
        events: &[LinkEvent],
        attacher: &mut dyn Attacher,
        now: Instant,
    ) -> Vec<Change> {
        let deleted: HashSet<u32> = events
            .iter()
            .filter_map(|e| match e {
                LinkEvent::Del(l) => Some(l.index),
                LinkEvent::New(_) => None,
            })
            .collect();
        let mut changes = Vec::new();
        let mut states = self.states.lock().expect("link states lock");
        for event in events {
            match event {
                LinkEvent::Del(link) => {
                    let Some(state) = states
                        .iter_mut()
                        .find(|s| s.ifindex != 0 && s.ifindex == link.index)
                    else {
                        continue;
                    };
                    attacher.forget(&state.name);
                    self.previous.insert(state.name.clone(), state.ifindex);
                    self.held.retain(|(_, c)| c.link().index != link.index);
                    changes.push(Change::Down {
                        link: Link {
                            name: state.name.clone(),
                            ..link.clone()
                        },
                        deleted: true,
                        attached: false,
                    });
                    state.ifindex = 0;
                    state.attached = false;
                    state.up = false;
                }
                LinkEvent::New(link) => {
                    let Some(state) = states.iter_mut().find(|s| s.name == link.name) else {
                        continue;
                    };
                    if deleted.contains(&link.index) && state.ifindex != link.index {
                        // The last word on a link deleted in this batch.
                        continue;
                    }
                    if state.ifindex != link.index {
                        if state.ifindex != 0 {
                            // Its deletion was missed (a resync found a new index).
                            attacher.forget(&state.name);
                            self.previous.insert(state.name.clone(), state.ifindex);
                            let old = state.ifindex;
                            self.held.retain(|(_, c)| c.link().index != old);
                            changes.push(Change::Down {
                                link: Link::gone(&state.name, state.ifindex),
                                deleted: true,
                                attached: false,
                            });
                        }
                        state.ifindex = link.index;
                        state.attached = false;
                        state.up = link.up();
                        let previous = self.previous.get(&state.name).copied();
                        changes.push(attach(
                            state,
                            link,
                            previous,
                            AttachReason::Recreated,
                            attacher,
                        ));
                        continue;
                    }
                    if !state.attached {
                        // A failed attach, tried again.
                        let previous = self.previous.get(&state.name).copied();
                        changes.push(attach(
                            state,
                            link,
                            previous,
                            AttachReason::Recreated,
                            attacher,
                        ));
                    }
                    let up = link.up();
                    if state.up && !up && !deleted.contains(&link.index) {
                        self.held.push((
                            now + DOWN_GRACE,
                            Change::Down {
                                link: link.clone(),
                                deleted: false,
                                attached: state.attached,
                            },
                        ));
                    } else if !state.up && up {
                        // A "down" still held is reported before its "up".
                        if let Some(i) = self
                            .held
                            .iter()
                            .position(|(_, c)| c.link().index == link.index)
                        {
                            changes.push(self.held.remove(i).1);
                        }
                        changes.push(Change::Up {
                            link: link.clone(),
                            attached: state.attached,
                        });
                    }
                    state.up = up;
                }
            }
        }
        let (due, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.held = held;
        changes.extend(due.into_iter().map(|(_, change)| change));
        changes
    }

    /// Without `--iface`: attaches to interfaces the endpoints are routed
    /// through now and were not before (`links` describes them).
    pub fn on_routes(
        &mut self,
        routed: &[String],
        links: &[Link],
        attacher: &mut dyn Attacher,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut states = self.states.lock().expect("link states lock");
        for name in routed {
            if states.iter().any(|s| &s.name == name) {
                continue;
            }
            let Some(link) = links.iter().find(|l| &l.name == name) else {
                continue;
            };
            states.push(InterfaceState {
                name: name.clone(),
                ifindex: link.index,
                attached: false,
                up: link.up(),
            });
            let state = states.last_mut().expect("just pushed");
            changes.push(attach(state, link, None, AttachReason::Route, attacher));
        }
        changes
    }
}

fn attach(
    state: &mut InterfaceState,
    link: &Link,
    previous_index: Option<u32>,
    reason: AttachReason,
    attacher: &mut dyn Attacher,
) -> Change {
    match attacher.attach(&state.name) {
        Ok(()) => {
            state.attached = true;
            Change::Attached {
                link: link.clone(),
                previous_index,
                reason,
            }
        }
        Err(e) => {
            // What was attached before the failure is undone: the next
            // try starts from nothing.
            attacher.forget(&state.name);
            Change::AttachFailed {
                link: link.clone(),
                reason,
                error: format!("{e:#}"),
            }
        }
    }
}

/// How long after a link event the ones that follow are waited for, to be
/// handled together.
const COALESCE: Duration = Duration::from_millis(20);
/// A netlink dump that has not ended by then is given up (and tried again
/// at the next event or check): the event loop waits for it, and a dump
/// whose end was lost (a receive-buffer overrun) would otherwise stall
/// every event behind it.
const DUMP_LIMIT: Duration = Duration::from_secs(3);

async fn within_dump_limit<T>(what: &str, dump: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(DUMP_LIMIT, dump)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("{what}: no answer within {DUMP_LIMIT:?}")))
}

/// The next message; never, once the subscription ended.
async fn receive(
    messages: &mut Messages,
    closed: bool,
) -> Option<(
    NetlinkMessage<RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)> {
    if closed {
        return std::future::pending().await;
    }
    messages.next().await
}

/// Sleeps until `due`; never without one.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await,
        None => std::future::pending().await,
    }
}

type Messages = mpsc::UnboundedReceiver<(
    NetlinkMessage<RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

/// The subscription to link (and route) events, and the [`Tracker`].
pub struct LinkWatcher {
    handle: Handle,
    messages: Messages,
    /// Taken from `messages`, not handled yet.
    pending: Vec<RouteNetlinkMessage>,
    /// When the batch in `pending` is handed out: its first message's
    /// arrival plus [`COALESCE`]. Kept across calls, because the event
    /// loop drops `next_batch` whenever another branch is ready (its 20 ms
    /// collection tick among them): a window restarted on every call would
    /// never close while events flow.
    batch_until: Option<tokio::time::Instant>,
    closed: bool,
    /// No `--iface`: follow the routes to `endpoints`.
    by_route: bool,
    endpoints: Vec<SocketAddr>,
    pub tracker: Tracker,
}

impl LinkWatcher {
    /// Subscribes (before anything is attached, so no event in between is
    /// missed). Needs the tokio runtime: the connection runs as a task.
    pub fn subscribe(by_route: bool, endpoints: &[SocketAddr]) -> Result<Self> {
        let mut groups = vec![MulticastGroup::Link];
        if by_route {
            groups.extend([MulticastGroup::Ipv4Route, MulticastGroup::Ipv6Route]);
        }
        let (connection, handle, messages) = rtnetlink::new_multicast_connection(&groups)
            .context("subscribing to link events over netlink")?;
        tokio::spawn(connection);
        Ok(Self {
            handle,
            messages,
            pending: Vec::new(),
            batch_until: None,
            closed: false,
            by_route,
            endpoints: endpoints.to_vec(),
            tracker: Tracker::default(),
        })
    }

    /// The next batch of events: waits for one, then takes what follows
    /// within [`COALESCE`] of it; or an empty batch when a held "down" is
    /// due (see [`Tracker::on_batch`]). Cancel-safe: what was taken waits in
    /// `pending`, and the batch's deadline in `batch_until`.
    pub async fn next_batch(&mut self) -> Vec<RouteNetlinkMessage> {
        if self.pending.is_empty() {
            let due = self.tracker.next_due();
            let got = tokio::select! {
                message = receive(&mut self.messages, self.closed) => Some(message),
                () = sleep_until(due) => None,
            };
            match got {
                None => return Vec::new(),
                Some(None) => {
                    log::warn!(
                        "the netlink subscription to link events ended: interfaces are \
                         checked every 30 s from now on"
                    );
                    self.closed = true;
                    return Vec::new();
                }
                Some(Some(message)) => self.take(message),
            }
        }
        let until = *self
            .batch_until
            .get_or_insert_with(|| tokio::time::Instant::now() + COALESCE);
        while let Ok(Some(message)) = tokio::time::timeout_at(until, self.messages.next()).await {
            self.take(message);
        }
        self.batch_until = None;
        std::mem::take(&mut self.pending)
    }

    fn take(
        &mut self,
        (message, _): (
            NetlinkMessage<RouteNetlinkMessage>,
            rtnetlink::sys::SocketAddr,
        ),
    ) {
        if let NetlinkPayload::InnerMessage(inner) = message.payload {
            self.pending.push(inner);
        }
    }

    /// Handles a batch from [`LinkWatcher::next_batch`].
    pub async fn on_batch(
        &mut self,
        batch: Vec<RouteNetlinkMessage>,
        attacher: &mut dyn Attacher,
    ) -> Vec<Change> {
        let mut routes_changed = false;
        let events: Vec<LinkEvent> = batch
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Link::from_message(l).map(LinkEvent::New),
                RouteNetlinkMessage::DelLink(l) => Link::from_message(l).map(LinkEvent::Del),
                RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => {
                    routes_changed = true;
                    None
                }
                _ => None,
            })
            .collect();
        let mut changes = self.tracker.on_batch(&events, attacher, Instant::now());
        if self.by_route && (routes_changed || !events.is_empty()) {
            changes.extend(self.follow_routes(attacher).await);
        }
        changes
    }

    /// Reads every link (and, by route, the routes) afresh: what events
    /// were missed (a netlink overrun) shows up here. At start and every
    /// 30 s.
    pub async fn resync(&mut self, attacher: &mut dyn Attacher) -> Vec<Change> {
        let links = match self.links().await {
            Ok(links) => links,
            Err(e) => {
                log::warn!("{e:#}");
                return Vec::new();
            }
        };
        let present: HashSet<u32> = links.iter().map(|l| l.index).collect();
        let mut events: Vec<LinkEvent> = self
            .tracker
            .states()
            .iter()
            .filter(|s| s.ifindex != 0 && !present.contains(&s.ifindex))
            .map(|s| LinkEvent::Del(Link::gone(&s.name, s.ifindex)))
            .collect();
        events.extend(links.into_iter().map(LinkEvent::New));
        let mut changes = self.tracker.on_batch(&events, attacher, Instant::now());
        if self.by_route {
            changes.extend(self.follow_routes(attacher).await);
        }
        changes
    }

    async fn links(&self) -> Result<Vec<Link>> {
        let dump = async {
            let mut dump = self.handle.link().get().execute();
            let mut links = Vec::new();
            while let Some(msg) = dump
                .try_next()
                .await
                .context("dumping the links (RTM_GETLINK)")?
            {
                links.extend(Link::from_message(&msg));
            }
            Ok(links)
        };
        within_dump_limit("dumping the links (RTM_GETLINK)", dump).await
    }

    async fn follow_routes(&mut self, attacher: &mut dyn Attacher) -> Vec<Change> {
        let read = Snapshot::read(&self.handle);
        let snapshot = match within_dump_limit("dumping the routes", read).await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("re-reading the routes to the endpoints: {e:#}");
                return Vec::new();
            }
        };
        let routed = snapshot.routed(&self.endpoints);
        let links = match self.links().await {
            Ok(links) => links,
            Err(e) => {
                log::warn!("{e:#}");
                return Vec::new();
            }
        };
        self.tracker.on_routes(&routed, &links, attacher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what was attached and forgotten; fails attaches it is told to.
    #[derive(Default)]
    struct Fake {
        log: Vec<String>,
        fail: bool,
    }

    impl Attacher for Fake {
        fn attach(&mut self, iface: &str) -> Result<()> {
            self.log.push(format!("attach {iface}"));
            if self.fail {
                anyhow::bail!("adding the clsact qdisc to {iface}: no such device");
            }
            Ok(())
        }

        fn forget(&mut self, iface: &str) {
            self.log.push(format!("forget {iface}"));
        }
    }

    fn link(name: &str, index: u32, up: bool) -> Link {
        Link {
            index,
            name: name.into(),
            admin_up: up,
            running: up,
            oper_state: if up { "up" } else { "down" }.into(),
        }
    }

    fn tracker() -> Tracker {
        let mut t = Tracker::default();
        t.track("eth0", 2, true);
        t
    }

    fn kinds(changes: &[Change]) -> Vec<&'static str> {
        changes
            .iter()
            .map(|c| match c {
                Change::Down { deleted: false, .. } => "down",
                Change::Down { deleted: true, .. } => "deleted",
                Change::Up { .. } => "up",
                Change::Attached { .. } => "attached",
                Change::AttachFailed { .. } => "attach-failed",
            })
            .collect()
    }

    /// A fixed "now" for the tracker.
    fn t0() -> Instant {
        use std::sync::OnceLock;
        static T0: OnceLock<Instant> = OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    #[test]
    fn down_and_up_are_reported_once_each_and_nothing_is_reattached() {
        let mut t = tracker();
        let mut k = Fake::default();
        let c = t.on_batch(&[LinkEvent::New(link("eth0", 2, false))], &mut k, t0());
        assert!(c.is_empty(), "held for DOWN_GRACE: {c:?}");
        assert_eq!(t.next_due(), Some(t0() + DOWN_GRACE));
        let c = t.on_batch(&[], &mut k, t0() + DOWN_GRACE);
        assert_eq!(kinds(&c), ["down"]);
        assert_eq!(t.next_due(), None);
        let c = t.on_batch(&[LinkEvent::New(link("eth0", 2, false))], &mut k, t0());
        assert!(c.is_empty(), "no change, no record: {c:?}");
        let c = t.on_batch(&[LinkEvent::New(link("eth0", 2, true))], &mut k, t0());
        assert_eq!(kinds(&c), ["up"]);
        assert!(k.log.is_empty(), "{:?}", k.log);
        assert!(t.states()[0].attached);
    }

    #[test]
    fn carrier_loss_is_down_too() {
        let mut t = tracker();
        let mut l = link("eth0", 2, true);
        l.running = false;
        l.oper_state = "lowerlayerdown".into();
        let mut k = Fake::default();
        t.on_batch(&[LinkEvent::New(l)], &mut k, t0());
        let c = t.on_batch(&[], &mut k, t0() + DOWN_GRACE);
        assert_eq!(kinds(&c), ["down"]);
    }

    #[test]
    fn deleted_then_recreated_is_attached_again_under_its_new_index() {
        let mut t = tracker();
        let mut k = Fake::default();
        // A deletion brings the link down first, in the same batch.
        let c = t.on_batch(
            &[
                LinkEvent::New(link("eth0", 2, false)),
                LinkEvent::Del(link("eth0", 2, false)),
            ],
            &mut k,
            t0(),
        );
        assert_eq!(kinds(&c), ["deleted"]);
        assert_eq!(
            t.states()[0],
            InterfaceState {
                name: "eth0".into(),
                ifindex: 0,
                attached: false,
                up: false
            }
        );
        let c = t.on_batch(&[LinkEvent::New(link("eth0", 7, false))], &mut k, t0());
        assert_eq!(kinds(&c), ["attached"]);
        match &c[0] {
            Change::Attached {
                previous_index,
                reason,
                link,
            } => {
                assert_eq!(*previous_index, Some(2));
                assert_eq!(*reason, AttachReason::Recreated);
                assert_eq!(link.index, 7);
            }
            other => panic!("{other:?}"),
        }
        let c = t.on_batch(&[LinkEvent::New(link("eth0", 7, true))], &mut k, t0());
        assert_eq!(kinds(&c), ["up"]);
        assert_eq!(k.log, ["forget eth0", "attach eth0"]);
        assert_eq!(t.states()[0].ifindex, 7);
        assert!(t.states()[0].attached);
    }

    #[test]
    fn a_deletion_after_the_down_is_reported_once_as_deleted() {
        let mut t = tracker();
        let mut k = Fake::default();
        // The kernel's "down" and "deleted" of one deletion, read apart.
        t.on_batch(&[LinkEvent::New(link("eth0", 2, false))], &mut k, t0());
        let c = t.on_batch(
            &[LinkEvent::Del(link("eth0", 2, false))],
            &mut k,
            t0() + DOWN_GRACE / 4,
        );
        assert_eq!(kinds(&c), ["deleted"]);
        assert_eq!(t.next_due(), None, "the down is not reported");
        assert!(t.on_batch(&[], &mut k, t0() + DOWN_GRACE).is_empty());
    }

    #[test]
    fn a_short_flap_reports_down_then_up() {
        let mut t = tracker();
        let mut k = Fake::default();
        t.on_batch(&[LinkEvent::New(link("eth0", 2, false))], &mut k, t0());
        let c = t.on_batch(&[LinkEvent::New(link("eth0", 2, true))], &mut k, t0());
        assert_eq!(kinds(&c), ["down", "up"]);
        assert_eq!(t.next_due(), None);
    }

    #[test]
    fn a_missed_deletion_is_found_by_the_new_index() {
        let mut t = tracker();
        let mut k = Fake::default();
        let c = t.on_batch(&[LinkEvent::New(link("eth0", 9, true))], &mut k, t0());
        assert_eq!(kinds(&c), ["deleted", "attached"]);
        assert_eq!(k.log, ["forget eth0", "attach eth0"]);
    }

    #[test]
    fn a_failed_attach_is_reported_and_tried_again() {
        let mut t = tracker();
        let mut k = Fake {
            fail: true,
            ..Fake::default()
        };
        t.on_batch(&[LinkEvent::Del(link("eth0", 2, false))], &mut k, t0());
        let c = t.on_batch(&[LinkEvent::New(link("eth0", 3, false))], &mut k, t0());
        assert_eq!(kinds(&c), ["attach-failed"]);
        assert!(!t.states()[0].attached);
        k.fail = false;
        let c = t.on_batch(&[LinkEvent::New(link("eth0", 3, true))], &mut k, t0());
        assert_eq!(kinds(&c), ["attached", "up"]);
        assert!(t.states()[0].attached);
    }

    #[test]
    fn other_interfaces_are_ignored() {
        let mut t = tracker();
        let mut k = Fake::default();
        let c = t.on_batch(
            &[
                LinkEvent::New(link("veth3", 11, true)),
                LinkEvent::Del(link("veth3", 11, true)),
            ],
            &mut k,
            t0(),
        );
        assert!(c.is_empty());
        assert!(k.log.is_empty());
    }

    #[test]
    fn a_route_moving_to_another_interface_attaches_there() {
        let mut t = tracker();
        let mut k = Fake::default();
        let links = [link("eth0", 2, true), link("ens6", 5, true)];
        let c = t.on_routes(&["ens6".into()], &links, &mut k);
        assert_eq!(kinds(&c), ["attached"]);
        assert!(matches!(
            c[0],
            Change::Attached {
                reason: AttachReason::Route,
                ..
            }
        ));
        assert!(t.on_routes(&["ens6".into()], &links, &mut k).is_empty());
        assert_eq!(k.log, ["attach ens6"]);
        assert_eq!(t.states().len(), 2, "eth0 stays watched");
    }
}
