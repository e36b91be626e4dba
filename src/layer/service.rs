//! [`GateService`]: what every layer wraps its inner service in.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower::Service;

use super::forward::Answer;
use super::paygate::PayGate;
use super::stack::Learned;
use super::stage::StageSet;
use super::{route, BoxError, GateBody};
use crate::store::{KeyStore, MemoryKeyStore};

/// The service a PayGate layer produces: the outermost one over a gate reads, checks and
/// decides the request for the stages on its route; the others pass it on.
///
/// ```
/// use paygate_mcp::{PayGate, PayGateConfig};
/// use tower::Layer;
/// # let mcp = tower::service_fn(|_req: http::Request<http_body_util::Full<bytes::Bytes>>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
/// # });
/// let pg = PayGate::new(PayGateConfig::default());
/// let mut svc = pg.billing().layer(mcp);
/// let _inner = svc.get_mut(); // the wrapped service, as with any tower middleware
/// let _mcp = svc.into_inner();
/// ```
pub struct GateService<S, St = MemoryKeyStore> {
    inner: S,
    pg: PayGate<St>,
    stage: StageSet,
    /// The stages found further in, per route (shared by clones).
    learned: Arc<Learned>,
}

impl<S: Clone, St> Clone for GateService<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            pg: self.pg.clone(),
            stage: self.stage,
            learned: self.learned.clone(),
        }
    }
}

impl<S: std::fmt::Debug, St> std::fmt::Debug for GateService<S, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateService")
            .field("stage", &self.stage)
            .field("handle", &self.pg)
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, St> GateService<S, St> {
    pub(crate) fn new(inner: S, pg: PayGate<St>, stage: StageSet) -> Self {
        Self {
            inner,
            pg,
            stage,
            learned: Arc::default(),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

type BoxAnswer<R, E> = Pin<Box<dyn Future<Output = Answer<R, E>> + Send>>;

pin_project! {
    /// The response future of [`GateService`].
    pub struct ResponseFuture<R, E>
    where
        R: Body,
    {
        fut: BoxAnswer<R, E>,
    }
}

impl<R: Body, E> Future for ResponseFuture<R, E> {
    type Output = Answer<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().fut.as_mut().poll(cx)
    }
}

impl<R: Body, E> std::fmt::Debug for ResponseFuture<R, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, St, B, ResBody> Service<Request<B>> for GateService<S, St>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    St: KeyStore,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    type Response = Response<GateBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let fut = route::handle(
            inner,
            self.pg.clone(),
            self.stage,
            self.learned.clone(),
            req,
        );
        ResponseFuture { fut: Box::pin(fut) }
    }
}
