//! The shape shared by the five stage layers and [`super::PayGateLayer`].

/// Defines a layer that builds a [`super::GateService`] for `$stage`.
macro_rules! stage_layer {
    ($(#[$doc:meta])* $name:ident, $stage:expr) => {
        $(#[$doc])*
        pub struct $name<St = $crate::store::MemoryKeyStore> {
            pg: $crate::layer::PayGate<St>,
        }

        impl<St> Clone for $name<St> {
            fn clone(&self) -> Self {
                Self { pg: self.pg.clone() }
            }
        }

        impl<St> std::fmt::Debug for $name<St> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).field("handle", &self.pg).finish()
            }
        }

        impl<St> $name<St> {
            pub(crate) fn from_handle(pg: $crate::layer::PayGate<St>) -> Self {
                Self { pg }
            }

            /// The handle the layer was made from.
            pub fn handle(&self) -> &$crate::layer::PayGate<St> {
                &self.pg
            }
        }

        impl<S, St> tower::Layer<S> for $name<St> {
            type Service = $crate::layer::GateService<S, St>;
            fn layer(&self, inner: S) -> Self::Service {
                self.pg.register($stage);
                $crate::layer::GateService::new(inner, self.pg.clone(), $stage)
            }
        }
    };
}
pub(crate) use stage_layer;
