//! The conformance suite: the executable form of the store contract (src/store/mod.rs),
//! written once and run against every store this build covers (one module per store,
//! e.g. `cargo test --test conformance sqlite::`).

#[path = "../support/mod.rs"]
mod support;

mod cases;

/// Instantiates every case for one store.
macro_rules! conformance {
    ($store:ident, $backend:expr, [$($case:ident),* $(,)?]) => {
        mod $store {
            $(
                #[test]
                fn $case() {
                    crate::cases::$case($backend);
                }
            )*
        }
    };
}

/// The list of cases, handed to `$m` for one store.
macro_rules! with_all_cases {
    ($m:ident, $store:ident, $backend:expr) => {
        $m!(
            $store,
            $backend,
            [
                exclusion_across_threads,
                busy_then_not_granted_after_wait,
                zero_wait_tries_once,
                stale_versions_are_rejected,
                expired_lease_is_taken_over,
                fencing_tokens_increase,
                fencing_tokens_increase_across_deletion,
                data_is_kept_and_replaced,
                delete_on_release_removes_the_record,
                delete_mutex_respects_live_leases,
                semaphore_bounds_under_contention,
                semaphore_resize_up_and_down,
                semaphore_must_exist,
                semaphore_mutexes_list_slots,
                permit_default_wait_is_the_semaphores_lease,
                delete_semaphore_respects_live_permits,
                permit_slots_have_increasing_fencing_tokens,
                tenants_are_isolated,
                guard_heartbeat_keeps_a_short_lease_alive,
                permit_heartbeat_keeps_a_short_lease_alive,
                drop_releases_the_lock,
                explicit_release_returns_errors,
                loss_is_reported_when_renewals_fail,
                lost_renewal_reply_does_not_lose_the_lease,
                late_renewal_does_not_revive_a_lost_lease,
                into_lock_hands_the_lease_on,
                invalid_input_is_rejected_before_io,
                list_shows_the_tenants_locks,
            ]
        );
    };
}

#[cfg(feature = "sqlite")]
with_all_cases!(conformance, sqlite, crate::support::Backend::Sqlite);
#[cfg(feature = "postgres")]
with_all_cases!(conformance, postgres, crate::support::Backend::Postgres);
#[cfg(feature = "mysql")]
with_all_cases!(conformance, mysql, crate::support::Backend::Mysql);
#[cfg(feature = "redis")]
with_all_cases!(conformance, redis, crate::support::Backend::Redis);
#[cfg(feature = "dynamodb")]
with_all_cases!(conformance, dynamodb, crate::support::Backend::DynamoDb);
