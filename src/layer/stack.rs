//! What a stack of layers knows: about one request on its way through (a [`Traversal`]), and
//! about itself (the stages each route's stack holds, [`Learned`]).
//!
//! The outermost layer over a gate reads the request and makes the one decision, for its own
//! stage and the stages it learned are further in on this route (on a route's first call,
//! the stages of the layers made from its handle: one handle per stack makes that exact). A layer further in over the
//! same gate passes the request on when its stage was decided; when it was not (the first
//! call on a route, or a stack that changed), it decides for its own stage itself, so a
//! stage is never skipped. Once the call reached the downstream the outermost layer learns
//! which stages the request passed, and undoes a charge made for a stage that turned out not
//! to be on the route.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::request::McpContext;
use super::stage::StageSet;

/// Routes remembered per outermost layer; past it one is forgotten for each new one.
const ROUTES_KEPT: usize = 1024;

/// A route through a stack: a `tools/call` and its tool (a router may send tools through
/// different layers), hashed with keys random to the process (so no
/// client can aim two routes at one entry; a collision would only cost an undo). Not the
/// URL path, which a client can vary at will: routes that differ in layers by path get
/// their layers per route (axum's `Router::layer` makes a layer per route).
pub(crate) type RouteKey = u64;

/// The stages found further in, per route, shared by the clones of one outermost layer.
#[derive(Default)]
pub(crate) struct Learned {
    routes: RwLock<HashMap<RouteKey, StageSet>>,
    hasher: std::hash::RandomState,
}

impl Learned {
    /// The key of the route of a call to `method` (and `tool`).
    pub(crate) fn route(&self, method: &str, tool: Option<&str>) -> RouteKey {
        use std::hash::BuildHasher;
        self.hasher.hash_one((method, tool))
    }

    /// The stages last seen on `route`, if it is known.
    pub(crate) fn get(&self, route: &RouteKey) -> Option<StageSet> {
        self.routes.read().get(route).copied()
    }

    /// Remembers the stages a request on `route` passed.
    pub(crate) fn set(&self, route: RouteKey, stages: StageSet) {
        if self.routes.read().get(&route) == Some(&stages) {
            return;
        }
        let mut routes = self.routes.write();
        if routes.len() >= ROUTES_KEPT && !routes.contains_key(&route) {
            if let Some(any) = routes.keys().next().cloned() {
                routes.remove(&any);
            }
        }
        routes.insert(route, stages);
    }
}

/// A layer's identity: the address of its route memory, shared by its clones only.
fn layer_id(learned: &Arc<Learned>) -> usize {
    Arc::as_ptr(learned) as usize
}

/// The layers a request entered, without an allocation for the stacks people build.
struct Entered {
    ids: [usize; 8],
    len: usize,
}

impl Entered {
    fn first(id: usize) -> Self {
        let mut ids = [0; 8];
        ids[0] = id;
        Self { ids, len: 1 }
    }

    /// False when `id` entered before. Past eight layers over one gate in one stack, the
    /// ninth and later are let in without being told apart from a second pass.
    fn enter(&mut self, id: usize) -> bool {
        if self.ids[..self.len].contains(&id) {
            return false;
        }
        if let Some(slot) = self.ids.get_mut(self.len) {
            *slot = id;
            self.len += 1;
        }
        true
    }
}

/// One request's way through the layers over one gate, carried in its extensions.
#[derive(Clone)]
pub(crate) struct Traversal(Arc<Inner>);

struct Inner {
    /// The gate (by address) whose layers share this traversal.
    gate: usize,
    /// Stages decided for the request so far.
    decided: AtomicU8,
    /// Stages whose layer the request passed.
    seen: AtomicU8,
    /// The layers (by the address of their [`Learned`]) the request entered.
    entered: parking_lot::Mutex<Entered>,
    /// A layer further in denied the call: nothing ran.
    denied_inside: AtomicBool,
    /// What the outermost layer read: body, parse, key, client IP.
    ctx: McpContext,
    /// Where the outermost layer learns what it finds, and under which route.
    learned: Arc<Learned>,
    route: Option<RouteKey>,
}

impl Traversal {
    /// A request the layer `first` takes first, deciding for `decided`.
    pub(crate) fn start<G>(
        gate: &Arc<G>,
        first: StageSet,
        decided: StageSet,
        ctx: McpContext,
        learned: Arc<Learned>,
        route: Option<RouteKey>,
    ) -> Self {
        Self(Arc::new(Inner {
            gate: Arc::as_ptr(gate) as *const () as usize,
            decided: AtomicU8::new((first | decided).bits()),
            seen: AtomicU8::new(first.bits()),
            entered: parking_lot::Mutex::new(Entered::first(layer_id(&learned))),
            denied_inside: AtomicBool::new(false),
            ctx,
            learned,
            route,
        }))
    }

    /// Whether the request is on its way through layers over `gate`.
    pub(crate) fn is_over<G>(&self, gate: &Arc<G>) -> bool {
        self.0.gate == Arc::as_ptr(gate) as *const () as usize
    }

    /// What the outermost layer read.
    pub(crate) fn ctx(&self) -> &McpContext {
        &self.0.ctx
    }

    /// The layer `layer` (its [`Learned`]) of `stage` takes the request: true the first
    /// time (a request sent through one layer twice, by a retry or a copy, is a new request
    /// there).
    pub(crate) fn enter(&self, layer: &Arc<Learned>, stage: StageSet) -> bool {
        if !self.0.entered.lock().enter(layer_id(layer)) {
            return false;
        }
        self.0.seen.fetch_or(stage.bits(), Ordering::AcqRel);
        true
    }

    /// The stages of `stage` nobody decided yet; they count as decided from now on.
    pub(crate) fn claim_undecided(&self, stage: StageSet) -> StageSet {
        let before = self.0.decided.fetch_or(stage.bits(), Ordering::AcqRel);
        StageSet::from_bits(stage.bits() & !before)
    }

    /// A charge for `stages` was undone because nothing ran (a refusal, an upstream down):
    /// the stages count as undecided again, so a later attempt on another way through (a
    /// failover) is decided afresh rather than let through.
    pub(crate) fn release(&self, stages: StageSet) {
        self.0.decided.fetch_and(!stages.bits(), Ordering::AcqRel);
    }

    /// A layer further in denied the call.
    pub(crate) fn deny_inside(&self) {
        self.0.denied_inside.store(true, Ordering::Release);
    }

    /// Whether a layer further in denied the call.
    pub(crate) fn denied_inside(&self) -> bool {
        self.0.denied_inside.load(Ordering::Acquire)
    }

    /// Called by the outermost layer once the downstream answered: says which decided
    /// stages the request never passed (decided from what was learned on another request,
    /// they are not on this route), and with `learn` (a call the downstream took) learns
    /// the route's stages. Refused or unknown requests teach nothing, so a client cannot
    /// fill the memory with invented routes.
    pub(crate) fn done(&self, learn: bool) -> StageSet {
        let seen = StageSet::from_bits(self.0.seen.load(Ordering::Acquire));
        let decided = StageSet::from_bits(self.0.decided.load(Ordering::Acquire));
        if let (true, Some(route)) = (learn, &self.0.route) {
            self.0.learned.set(*route, seen);
        }
        StageSet::from_bits(decided.bits() & !seen.bits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> McpContext {
        McpContext {
            body: bytes::Bytes::new(),
            rpc: None,
            api_key: None,
            account: None,
            token_error: None,
            client_ip: None,
        }
    }

    #[test]
    fn each_layer_enters_once_and_claims_only_what_is_undecided() {
        let gate = Arc::new(());
        let learned = Arc::new(Learned::default());
        let route = learned.route("tools/call", None);
        let t = Traversal::start(
            &gate,
            StageSet::AUTH,
            StageSet::BILLING,
            ctx(),
            learned.clone(),
            Some(route),
        );
        assert!(t.is_over(&gate) && !t.is_over(&Arc::new(())));
        assert!(
            !t.enter(&learned, StageSet::AUTH),
            "the first layer is in already"
        );
        let billing = Arc::new(Learned::default());
        assert!(t.enter(&billing, StageSet::BILLING));
        assert!(
            !t.enter(&billing, StageSet::BILLING),
            "a second pass is a new request"
        );
        let second_auth = Arc::new(Learned::default());
        assert!(
            t.enter(&second_auth, StageSet::AUTH),
            "another layer of a stage enters"
        );
        assert_eq!(t.claim_undecided(StageSet::BILLING), StageSet::default());
        assert_eq!(t.claim_undecided(StageSet::QUOTA), StageSet::QUOTA);
        assert_eq!(t.claim_undecided(StageSet::QUOTA), StageSet::default());
        // Quota was decided but its layer never saw the request.
        assert_eq!(t.done(true), StageSet::QUOTA);
        assert_eq!(
            learned.get(&route),
            Some(StageSet::AUTH | StageSet::BILLING)
        );
    }

    #[test]
    fn the_route_memory_is_bounded() {
        let learned = Learned::default();
        for n in 0..ROUTES_KEPT + 10 {
            let route = learned.route(&format!("m{n}"), None);
            learned.set(route, StageSet::AUTH);
        }
        assert!(learned.routes.read().len() <= ROUTES_KEPT);
    }
}
