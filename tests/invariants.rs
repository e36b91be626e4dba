//! Model-based property test: random sequences of charges, refunds, top-ups, limit changes
//! and clock moves keep the store exactly in step with a simple model, and the invariants
//! (no negative balance, limits respected, refunds never mint credits) always hold.

mod common;

use common::{gate, record, update};
use paygate_mcp::{CallRequest, ChargeReceipt, Clock, DenyReason, KeyUpdate, PayGateConfig, Quota};
use proptest::prelude::*;

const PRICES: [u64; 4] = [0, 1, 5, 13];
const RATE: usize = 5;
const DAILY_CALLS: u64 = 10;
const DAILY_CREDITS: u64 = 40;

#[derive(Debug, Clone)]
enum Op {
    Charge(usize),
    Refund(usize),
    TopUp(u64),
    SetLimit(u64),
    Advance(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PRICES.len()).prop_map(Op::Charge),
        2 => any::<usize>().prop_map(Op::Refund),
        1 => (0u64..60).prop_map(Op::TopUp),
        1 => (0u64..200).prop_map(Op::SetLimit),
        2 => prop_oneof![0i64..20_000, 0i64..(6 * 3_600_000)].prop_map(Op::Advance),
    ]
}

#[derive(Default)]
struct Model {
    credits: u64,
    spent: u64,
    calls: u64,
    limit: u64,
    day: i64,
    day_calls: u64,
    day_credits: u64,
    stamps: Vec<i64>,
}

impl Model {
    fn roll(&mut self, now_ms: i64) {
        let day = now_ms.div_euclid(86_400_000);
        if day != self.day {
            self.day = day;
            self.day_calls = 0;
            self.day_credits = 0;
        }
    }

    fn decide(&mut self, price: u64, now_ms: i64) -> Option<DenyReason> {
        self.roll(now_ms);
        self.stamps.retain(|&t| t > now_ms - 60_000);
        if self.stamps.len() >= RATE {
            Some(DenyReason::RateLimited)
        } else if self.credits < price {
            Some(DenyReason::InsufficientCredits)
        } else if self.limit > 0 && self.spent + price > self.limit {
            Some(DenyReason::SpendingLimitExceeded)
        } else if self.day_calls >= DAILY_CALLS {
            Some(DenyReason::DailyCallQuotaExceeded)
        } else if self.day_credits + price > DAILY_CREDITS {
            Some(DenyReason::DailyCreditQuotaExceeded)
        } else {
            None
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..120)) {
        let cfg = PayGateConfig::default()
            .with_rate_limit(RATE as u64)
            .with_tool_price("p0", PRICES[0])
            .with_tool_price("p1", PRICES[1])
            .with_tool_price("p2", PRICES[2])
            .with_tool_price("p3", PRICES[3])
            .with_global_quota(Quota {
                daily_call_limit: DAILY_CALLS,
                daily_credit_limit: DAILY_CREDITS,
                ..Default::default()
            });
        let (clock, gate) = gate(cfg);
        let key = gate.create_key_blocking("p", 30).unwrap();
        let mut model = Model { credits: 30, ..Default::default() };
        let mut receipts: Vec<(ChargeReceipt, i64)> = Vec::new();
        let mut minted_check_credits_in = 30u64; // credits ever put in (start + top-ups)

        for op in ops {
            let now = clock.now_ms();
            match op {
                Op::Charge(i) => {
                    let tool = format!("p{i}");
                    let expected = model.decide(PRICES[i], now);
                    let d = gate.evaluate_blocking(&CallRequest::new(&key, &tool));
                    prop_assert_eq!(d.reason, expected);
                    prop_assert_eq!(d.allowed, expected.is_none());
                    if expected.is_none() {
                        let price = PRICES[i];
                        model.credits -= price;
                        model.spent += price;
                        model.calls += 1;
                        model.day_calls += 1;
                        model.day_credits += price;
                        model.stamps.push(now);
                        prop_assert_eq!(d.credits_charged, price);
                        receipts.push((d.receipt.expect("allowed calls carry a receipt"), model.day));
                    } else {
                        prop_assert!(d.receipt.is_none());
                        prop_assert_eq!(d.credits_charged, 0);
                    }
                }
                Op::Refund(pick) => {
                    if receipts.is_empty() { continue; }
                    let (receipt, day) = receipts.swap_remove(pick % receipts.len());
                    let credits = receipt.credits();
                    gate.refund_blocking(receipt).expect("key exists");
                    model.roll(now);
                    model.credits += credits;
                    model.spent -= credits;
                    model.calls -= 1;
                    if day == model.day {
                        model.day_calls -= 1;
                        model.day_credits -= credits;
                    }
                }
                Op::TopUp(n) => {
                    update(&gate, &key, KeyUpdate::TopUp(n));
                    model.credits += n;
                    minted_check_credits_in += n;
                }
                Op::SetLimit(n) => {
                    update(&gate, &key, KeyUpdate::SetSpendingLimit(n));
                    model.limit = n;
                }
                Op::Advance(ms) => clock.advance_ms(ms),
            }
            let rec = record(&gate, &key);
            model.roll(clock.now_ms());
            let usage = rec.quota_usage.rolled(clock.now_ms());
            prop_assert_eq!(rec.credits, model.credits);
            prop_assert_eq!(rec.total_spent, model.spent);
            prop_assert_eq!(rec.total_calls, model.calls);
            prop_assert_eq!(usage.daily_calls, model.day_calls);
            prop_assert_eq!(usage.daily_credits, model.day_credits);
            // Conservation: what is held plus what is spent is exactly what was put in.
            prop_assert_eq!(rec.credits + rec.total_spent, minted_check_credits_in);
            prop_assert!(usage.daily_calls <= DAILY_CALLS);
            prop_assert!(usage.daily_credits <= DAILY_CREDITS);
        }
    }
}
