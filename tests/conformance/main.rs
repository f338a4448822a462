//! The conformance suite: the executable form of the store contract (src/store/mod.rs),
//! written once and run against every store this build covers (one module per store,
//! e.g. `cargo test --test conformance sqlite::`).

#[path = "../support/mod.rs"]
mod support;

mod cases;
mod corners;

/// Instantiates every case for one store.
macro_rules! conformance {
    ($store:ident, $backend:expr, [$($module:ident :: $case:ident),* $(,)?]) => {
        mod $store {
            $(
                #[test]
                fn $case() {
                    crate::$module::$case($backend);
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
                cases::exclusion_across_threads,
                cases::a_release_wakes_a_waiter_of_the_same_manager,
                cases::a_released_permit_wakes_a_waiter_of_the_same_manager,
                cases::busy_then_not_granted_after_wait,
                cases::zero_wait_tries_once,
                cases::stale_versions_are_rejected,
                cases::expired_lease_is_taken_over,
                cases::fencing_tokens_increase,
                cases::fencing_tokens_increase_across_deletion,
                cases::data_is_kept_and_replaced,
                cases::delete_on_release_removes_the_record,
                cases::delete_mutex_respects_live_leases,
                cases::semaphore_bounds_under_contention,
                cases::semaphore_resize_up_and_down,
                cases::semaphore_must_exist,
                cases::semaphore_mutexes_list_slots,
                cases::permit_default_wait_is_the_semaphores_lease,
                cases::delete_semaphore_respects_live_permits,
                cases::permit_slots_have_increasing_fencing_tokens,
                cases::tenants_are_isolated,
                cases::guard_heartbeat_keeps_a_short_lease_alive,
                cases::permit_heartbeat_keeps_a_short_lease_alive,
                cases::drop_releases_the_lock,
                cases::explicit_release_returns_errors,
                cases::loss_is_reported_when_renewals_fail,
                cases::lost_renewal_reply_does_not_lose_the_lease,
                cases::late_renewal_does_not_revive_a_lost_lease,
                cases::into_lock_hands_the_lease_on,
                cases::invalid_input_is_rejected_before_io,
                cases::list_shows_the_tenants_locks,
                corners::renewal_after_shrink_and_expiry_is_refused,
                corners::expired_lease_is_not_renewed,
                corners::grants_resume_after_a_shrink_once_fewer_are_busy,
                corners::look_alike_names_are_different_names,
                corners::loss_is_signalled_by_the_deadline_while_a_renewal_hangs,
                corners::release_after_an_in_doubt_renewal_frees_the_lease,
                corners::acquire_whose_reply_was_lost_gets_its_own_grant,
                corners::caller_named_renewal_version_is_idempotent,
                corners::unworkable_renewal_schedules_are_refused,
                corners::drop_returns_within_the_io_timeout_when_the_store_stalls,
                corners::permits_of_the_longest_semaphore_key_renew_and_release,
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
#[cfg(feature = "redis")]
with_all_cases!(conformance, redis_tls, crate::support::Backend::RedisTls);
#[cfg(feature = "redis")]
with_all_cases!(
    conformance,
    redis_sentinel,
    crate::support::Backend::RedisSentinel
);
#[cfg(feature = "redis")]
with_all_cases!(
    conformance,
    redis_cluster,
    crate::support::Backend::RedisCluster
);
#[cfg(feature = "dynamodb")]
with_all_cases!(conformance, dynamodb, crate::support::Backend::DynamoDb);
