//! Every stack of the five layers, built at run time: the orderings of every subset, each
//! layer boxed so stacks of any shape share one type.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use paygate_mcp::{Gate, GateService, KeyStore, PayGate};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

/// A stack of layers over a downstream, boxed.
pub type Stack =
    BoxCloneService<Request<Full<Bytes>>, Response<UnsyncBoxBody<Bytes, Infallible>>, Infallible>;

/// One layer of a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Auth,
    RateLimit,
    Quota,
    Billing,
    Alerts,
}

pub const STAGES: [Stage; 5] = [
    Stage::Auth,
    Stage::RateLimit,
    Stage::Quota,
    Stage::Billing,
    Stage::Alerts,
];

/// Rate limits, quotas or billing: a stage that needs the store's decision.
pub fn decides(stages: &[Stage]) -> bool {
    stages
        .iter()
        .any(|s| matches!(s, Stage::RateLimit | Stage::Quota | Stage::Billing))
}

fn boxed<St: KeyStore>(svc: GateService<Stack, St>) -> Stack {
    BoxCloneService::new(ServiceExt::<Request<Full<Bytes>>>::map_response(svc, |r| {
        r.map(|b| b.boxed_unsync())
    }))
}

/// A downstream service boxed to a [`Stack`].
pub fn boxed_downstream<S>(downstream: S) -> Stack
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    BoxCloneService::new(
        downstream.map_response(|r: Response<Full<Bytes>>| r.map(|b| b.boxed_unsync())),
    )
}

/// `stages` stacked outermost first over `downstream`, from a fresh handle over `gate`.
pub fn stack<St: KeyStore>(gate: &Arc<Gate<St>>, stages: &[Stage], downstream: Stack) -> Stack {
    let pg = PayGate::from_gate(gate.clone());
    let mut svc = downstream;
    for stage in stages.iter().rev() {
        svc = match stage {
            Stage::Auth => boxed(pg.auth().layer(svc)),
            Stage::RateLimit => boxed(pg.rate_limit().layer(svc)),
            Stage::Quota => boxed(pg.quota().layer(svc)),
            Stage::Billing => boxed(pg.billing().layer(svc)),
            Stage::Alerts => boxed(pg.alerts().layer(svc)),
        };
    }
    svc
}

/// Every ordering of every non-empty subset of the five stages (325 stacks).
pub fn every_stack() -> Vec<Vec<Stage>> {
    fn permutations(rest: Vec<Stage>, prefix: Vec<Stage>, out: &mut Vec<Vec<Stage>>) {
        if rest.is_empty() {
            out.push(prefix);
            return;
        }
        for i in 0..rest.len() {
            let mut rest = rest.clone();
            let mut prefix = prefix.clone();
            prefix.push(rest.remove(i));
            permutations(rest, prefix, out);
        }
    }
    let mut out = Vec::new();
    for mask in 1u32..32 {
        let subset: Vec<Stage> = (0..5)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| STAGES[i])
            .collect();
        permutations(subset, Vec::new(), &mut out);
    }
    out
}
