//! Getting paid with Stripe (SPEC §13): [`signature`] checks the webhooks Stripe signs,
//! [`event`] reads which payments add credits to which account, and [`checkout`] creates the
//! Checkout Sessions keys buy credits with. The endpoints (`POST /stripe/webhook`,
//! `POST /checkout`) are served by the admin service when the config has a `stripe`
//! section; each payment is credited once by the store
//! ([`KeyStore::credit_payment`](crate::KeyStore::credit_payment)).

#[cfg(feature = "stripe")]
pub mod checkout;
pub mod event;
pub mod signature;
