//! The five concerns a layer can add, as a small set.

use crate::store::Checks;

/// A set of the gate's stages. Each layer is one stage; a [`super::PayGate`] handle knows
/// the union of the layers made from it, and the outermost of them acts for that union.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct StageSet(u8);

impl StageSet {
    pub(crate) const AUTH: StageSet = StageSet(1);
    pub(crate) const RATE_LIMIT: StageSet = StageSet(2);
    pub(crate) const QUOTA: StageSet = StageSet(4);
    pub(crate) const BILLING: StageSet = StageSet(8);
    pub(crate) const ALERTS: StageSet = StageSet(16);
    pub(crate) const ALL: StageSet = StageSet(31);

    const NAMES: [(StageSet, &'static str); 5] = [
        (Self::AUTH, "auth"),
        (Self::RATE_LIMIT, "rate_limit"),
        (Self::QUOTA, "quota"),
        (Self::BILLING, "billing"),
        (Self::ALERTS, "alerts"),
    ];

    pub(crate) fn bits(self) -> u8 {
        self.0
    }

    pub(crate) fn from_bits(bits: u8) -> Self {
        Self(bits & Self::ALL.0)
    }

    pub(crate) fn contains(self, other: StageSet) -> bool {
        self.0 & other.0 == other.0
    }

    pub(crate) fn intersects(self, other: StageSet) -> bool {
        self.0 & other.0 != 0
    }

    /// Rate limits, quotas or billing: a stage that needs the store's atomic decision.
    pub(crate) fn decides(self) -> bool {
        self.0 & (Self::RATE_LIMIT.0 | Self::QUOTA.0 | Self::BILLING.0) != 0
    }

    /// Every stage but alerts requires a valid key (a rate window or a quota is per key).
    pub(crate) fn needs_key(self) -> bool {
        self.0 & !Self::ALERTS.0 != 0
    }

    /// The store checks these stages apply.
    pub(crate) fn checks(self) -> Checks {
        Checks {
            rate_limits: self.contains(Self::RATE_LIMIT),
            quotas: self.contains(Self::QUOTA),
            credits: self.contains(Self::BILLING),
        }
    }
}

impl std::ops::BitOr for StageSet {
    type Output = StageSet;
    fn bitor(self, rhs: StageSet) -> StageSet {
        StageSet(self.0 | rhs.0)
    }
}

impl std::fmt::Debug for StageSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = Self::NAMES
            .iter()
            .filter(|(s, _)| self.contains(*s))
            .map(|(_, n)| *n);
        f.debug_set().entries(names).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stage_maps_to_its_own_checks_only() {
        let rate = StageSet::RATE_LIMIT.checks();
        assert!(rate.rate_limits && !rate.quotas && !rate.credits);
        let billing = StageSet::BILLING.checks();
        assert!(!billing.rate_limits && !billing.quotas && billing.credits);
        assert_eq!(StageSet::ALL.checks(), Checks::ALL);
        assert_eq!(StageSet::AUTH.checks(), Checks::NONE);
    }

    #[test]
    fn only_alerts_neither_decides_nor_needs_a_key() {
        assert!(!StageSet::ALERTS.needs_key() && !StageSet::ALERTS.decides());
        assert!(StageSet::AUTH.needs_key() && !StageSet::AUTH.decides());
        assert!((StageSet::QUOTA | StageSet::ALERTS).decides());
        assert_eq!(
            format!("{:?}", StageSet::AUTH | StageSet::BILLING),
            r#"{"auth", "billing"}"#
        );
        assert_eq!(StageSet::from_bits(0xff), StageSet::ALL);
    }
}
