//! The controller's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of the per-pool address gauge.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Pool name.
    pub pool: String,
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// `total`, `used` or `available`.
    pub state: String,
}

/// Labels naming a pool.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    /// Pool name.
    pub pool: String,
}

/// Labels of the per-pool condition gauge.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    /// Pool name.
    pub pool: String,
    /// Condition type: `Ready`, `Invalid` or `Conflicting`.
    pub condition: String,
}

/// Labels naming a failure reason.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Short reason (`pool_full`, `address_taken`, ...).
    pub reason: String,
}

/// Everything the controller reports.
#[derive(Clone)]
pub struct Metrics {
    /// Addresses per pool, family and state (saturating at 2^63-1).
    pub addresses: Family<PoolLabels, Gauge>,
    /// Addresses handed out, per pool.
    pub allocations: Family<PoolLabel, Counter>,
    /// Allocations that failed, per reason.
    pub failures: Family<ReasonLabel, Counter>,
    /// 1 where a pool's condition is True, 0 where False.
    pub pool_conditions: Family<ConditionLabels, Gauge>,
    /// Services of ours that wait for an address.
    pub pending: Gauge,
    /// Time to reconcile one Service.
    pub reconcile_duration: Histogram,
    /// 1 while this replica leads.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            addresses: Family::default(),
            allocations: Family::default(),
            failures: Family::default(),
            pool_conditions: Family::default(),
            pending: Gauge::default(),
            reconcile_duration: Histogram::new([0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]),
            leader: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under `ferrolb_`.
    pub fn register(&self, r: &mut Registry) {
        r.register("ferrolb_pool_addresses", "Addresses per pool, family and state", self.addresses.clone());
        r.register("ferrolb_allocations", "Addresses handed out, per pool", self.allocations.clone());
        r.register("ferrolb_allocation_failures", "Failed allocations, per reason", self.failures.clone());
        r.register(
            "ferrolb_pool_condition",
            "1 where a pool's condition (Ready, Invalid, Conflicting) is True",
            self.pool_conditions.clone(),
        );
        r.register("ferrolb_services_pending", "Services waiting for an address", self.pending.clone());
        r.register(
            "ferrolb_reconcile_duration_seconds",
            "Time to reconcile one Service",
            self.reconcile_duration.clone(),
        );
        r.register("ferrolb_controller_leader", "1 while this replica is the leader", self.leader.clone());
    }

    /// Metrics with one series of empty label values per family, so that the generated
    /// reference (docs/CONFIGURATION.md) shows every family's labels.
    pub fn with_every_label() -> Self {
        let m = Self::default();
        let _ = m.addresses.get_or_create(&PoolLabels::default());
        let _ = m.allocations.get_or_create(&PoolLabel::default());
        let _ = m.failures.get_or_create(&ReasonLabel::default());
        let _ = m.pool_conditions.get_or_create(&ConditionLabels::default());
        m
    }
}
