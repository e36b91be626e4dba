//! [`GateService`]: what every layer wraps its inner service in.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower::Service;

use super::forward::Answer;
use super::paygate::{PayGate, Traversal};
use super::stage::StageSet;
use super::{route, BoxError, GateBody};
use crate::store::{KeyStore, MemoryKeyStore};

/// The service a PayGate layer produces: the outermost one of a [`PayGate`] handle reads,
/// checks and decides the request for every stage of the handle; the others pass it on.
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
}

impl<S: Clone, St> Clone for GateService<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            pg: self.pg.clone(),
            stage: self.stage,
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
        Self { inner, pg, stage }
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
    pub struct ResponseFuture<F, R, E>
    where
        R: Body,
    {
        #[pin]
        state: State<F, R, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, R, E>
    where
        R: Body,
    {
        // A layer further in: the request was handled by the outermost one.
        PassedOn { #[pin] fut: F },
        // The outermost layer: reading, deciding, forwarding, watching.
        Handled { fut: BoxAnswer<R, E> },
    }
}

impl<F, R, E> Future for ResponseFuture<F, R, E>
where
    F: Future<Output = Result<Response<R>, E>>,
    R: Body,
{
    type Output = Answer<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::PassedOn { fut } => fut
                .poll(cx)
                .map(|r| r.map(|resp| resp.map(|b| GateBody::inner(b, None)))),
            StateProj::Handled { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<F, R: Body, E> std::fmt::Debug for ResponseFuture<F, R, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let role = match self.state {
            State::PassedOn { .. } => "passed on",
            State::Handled { .. } => "handled",
        };
        f.debug_tuple("ResponseFuture").field(&role).finish()
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
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let passed = req
            .extensions()
            .get::<Traversal>()
            .filter(|t| t.is_of(&self.pg))
            .cloned();
        if let Some(traversal) = passed {
            // A layer further out handled this request for the whole stack; the body it read
            // is passed on as it was.
            traversal.pass(self.stage);
            let (parts, _) = req.into_parts();
            let req = Request::from_parts(parts, Full::new(traversal.body));
            return ResponseFuture {
                state: State::PassedOn {
                    fut: self.inner.call(req),
                },
            };
        }
        // The clone that was driven to readiness serves this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Handled {
                fut: Box::pin(route::handle(inner, self.pg.clone(), self.stage, req)),
            },
        }
    }
}
