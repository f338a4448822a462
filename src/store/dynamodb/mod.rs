//! The DynamoDB store (Amazon DynamoDB, or a compatible server such as DynamoDB Local, moto or
//! dynalite), over the official `aws-sdk-dynamodb`.
//!
//! # Blocking
//!
//! The store owns a small current-thread tokio runtime and blocks on it for every request, so
//! the library stays synchronous. It must not be called from inside an async runtime (including
//! `spawn_blocking` closures, which run inside one): it then fails with
//! [`LockError::Config`](crate::LockError::Config) instead of panicking. Call it from a plain
//! thread (`std::thread::spawn`) instead. Every request is bounded by
//! [`LocksConfig::io_timeout`](crate::LocksConfig::io_timeout) (the SDK's operation timeout,
//! retries included) and connecting by
//! [`LocksConfig::connect_timeout`](crate::LocksConfig::connect_timeout). Region, credentials
//! and endpoint come from the AWS default chain; `dynamodb_region` and `dynamodb_endpoint`
//! override them.
//!
//! # Tables
//!
//! Both tables have a string partition key `pk` and a string sort key `sk`, on-demand billing,
//! no secondary index. [`AdminStore::migrate`] creates them if missing and waits until they are
//! active. With `run_migrations = false`, a missing table fails every call with an error that
//! names it.
//!
//! `dynamodb_mutex_table` holds plain mutexes and permit slots:
//!
//! | attribute | type | meaning |
//! |---|---|---|
//! | `pk` | S | `<tenant_id>` U+001F `<semaphore_key>`; the semaphore key is empty for plain mutexes |
//! | `sk` | S | the mutex key, or the slot key `<semaphore_key>_<index>` |
//! | `tenant_id`, `semaphore_key` (slots), `slot_index` (slots) | S, S, N | for readers |
//! | `version` | S | the holder's version (compare-and-set for renew and release) |
//! | `rvn` | S | record version number: new on every grant and renewal (also a retried one) |
//! | `fencing_token` | N | `ADD 1` on every grant; never reset |
//! | `lease_duration_ms`, `expires_at_ms` | N | the lease, and the writer's wall clock + lease |
//! | `locked`, `delete_on_release` | BOOL | |
//! | `data` | S | optional |
//! | `deleted` | BOOL | tombstone: a deleted mutex keeps its item (and fencing token) |
//!
//! All plain mutexes of a tenant share one partition key, and the slots of a semaphore another,
//! so listing is one `Query`. DynamoDB spreads a busy item collection over partitions by sort
//! key, but one tenant's locks share the per-partition throughput limits until it does.
//!
//! `dynamodb_semaphore_table` holds one item per semaphore: `pk` = tenant, `sk` = semaphore
//! key, `version`, `max_size`, `lease_duration_ms`, `slot_count` (slot items `0..slot_count`
//! exist; they are never deleted, so their fencing tokens survive shrinking and deletion),
//! `retired` (NS: slots at or above `max_size` that may still be held after a shrink),
//! `deleting` and `deleted` (BOOL).
//!
//! # Clocks
//!
//! DynamoDB has no server clock. By default a waiter takes over a lease that still looks held
//! only after it has seen the record's `rvn` unchanged for a whole lease on its own monotonic
//! clock (the approach of the AWS DynamoDB lock client); no two machines' clocks are compared.
//! The cost: a process that first looks at an abandoned lock waits up to one lease before it
//! can take it over, and administrative deletes of such a lock report `Conflict` until then
//! (a process that granted or renewed a lease itself starts watching at once). With
//! `dynamodb_trust_expiry_with_skew = Some(skew)`, a waiter instead trusts the
//! `expires_at_ms` the holder wrote (the holder's wall clock plus the lease) plus `skew`,
//! which takes over as soon as that time has passed but relies on the clocks
//! being within `skew` of each other. Either way `expires_at` in records is the writer's clock
//! plus the lease, and busy counts compare it with the local clock (they are reports, not
//! decisions).
//!
//! # Cost per operation
//!
//! For items under 1 KB (more `data` costs one write unit per KB): reads here are strongly
//! consistent (1 RCU per 4 KB read), writes cost 1 WCU per KB, rejected conditional writes too.
//! A `Query` is one request per 1 MB page it reads.
//!
//! | operation | requests | units |
//! |---|---|---|
//! | acquire mutex (granted or busy) | 1 `UpdateItem` (a retry that finds its own grant: 2) | 1 WCU (2) |
//! | renew, release | 1 `UpdateItem` | 1 WCU |
//! | get mutex | 1 `GetItem` | 1 RCU |
//! | delete mutex | 1 `UpdateItem` | 1 WCU |
//! | acquire permit, one of two random slots free | 1–2 `UpdateItem` + 1 `GetItem` | 1–2 WCU + 1 RCU (+1 RCU on a process's first use of the semaphore) |
//! | acquire permit, both probes busy | 2 `UpdateItem` + 1 `Query` (+1 `UpdateItem` per free slot tried) + 1 `GetItem` | 2–3 WCU + 1 RCU per 4 KB of slots (~16 slots) + 1 RCU |
//! | after a shrink, while retired slots drain | + 1 `Query` of the slots + 1 `UpdateItem` per lapsed slot freed + 1 `TransactWriteItems` per live slot swapped + 1 `UpdateItem` | + slots' RCU + 1 WCU per freed slot + 2 WCU per item of a swap (3 items) + 1 WCU |
//! | create / resize semaphore | 1 `GetItem` + 1 `PutItem` per new slot + 1 `UpdateItem` (again if the semaphore changed meanwhile) + 1 `Query` (busy count), + the drain when shrinking | 1 RCU + 1 WCU per new slot + 1 WCU + slots' RCU + … |
//! | get semaphore, list its slots | 1 `GetItem` + 1 `Query` | 1 RCU + 1 RCU per 4 KB of slots |
//! | delete semaphore | 1 `GetItem` + 1 `Query` + 2 `UpdateItem` | 1 RCU + slots' RCU + 2 WCU |
//! | list mutexes / semaphores | 1 `Query` (+1 `Query` per semaphore) | 1 RCU per 4 KB, tombstones included |
//!
//! # Semaphores
//!
//! A permit is a conditional `UpdateItem` on a random slot below `max_size` (one more random
//! slot if that one is busy, then a `Query` of all slots to find a free one or establish that
//! all are busy). The semaphore item is then read again: a grant made while the semaphore was
//! resized or deleted (its `version` changed) is kept only if it is valid under the new
//! record, and otherwise undone. A shrink moves the slots at and above the new size into
//! `retired`; no permit is granted while any of them is held, and acquirers drop them from
//! `retired` once they are free. A deletion first marks the semaphore `deleting` (no grants),
//! then checks the slots; if the process dies in between, the semaphore grants nothing until it
//! is deleted again or re-created with [`AdminStore::put_semaphore`].
//!
//! # Test servers
//!
//! The protocol relies on DynamoDB applying each conditional write atomically. moto's threaded
//! server (`moto_server`) evaluates a condition and applies the update without a lock, so
//! concurrent writers can both succeed there; run it with requests serialised (or use
//! DynamoDB Local) when testing mutual exclusion.

// The store's methods, by what they hold: `client` (runtime, SDK client, timeouts, error
// classification, single requests), `tables` (schema), `mutexes` (grants, renewals, releases
// and tombstones of mutex-table records; plain mutexes), `semaphores` (semaphore records and
// their slots), `permits` (the permit protocol and retired slots), `item` (keys, attributes,
// expressions) and `watch` (when a lease that looks held may be taken over).
mod client;
mod item;
mod mutexes;
mod permits;
mod semaphores;
mod tables;
mod watch;

use aws_sdk_dynamodb::Client;
use parking_lot::Mutex;

use self::item::SemaphoreInfo;
use self::watch::Watcher;
use super::{AdminStore, LeaseStore, MutexRequest, PermitRequest, ReleaseRequest, RenewRequest};
use crate::error::{Redactor, Result};
use crate::model::{MutexLock, Semaphore};

/// A lock store in DynamoDB. See the module docs for the layout, the clock discussion and costs.
pub struct DynamoDbStore {
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
    mutex_table: String,
    semaphore_table: String,
    watcher: Watcher,
    /// Semaphores as last read, keyed by (tenant, key): saves a read per permit acquire.
    semaphores: Mutex<std::collections::HashMap<(String, String), SemaphoreInfo>>,
    redactor: Redactor,
}

impl std::fmt::Debug for DynamoDbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbStore")
            .field("mutex_table", &self.mutex_table)
            .field("semaphore_table", &self.semaphore_table)
            .finish_non_exhaustive()
    }
}

impl Drop for DynamoDbStore {
    fn drop(&mut self) {
        // Dropping a runtime inside another one panics; shutting it down in the background
        // does not, and nothing is left to wait for.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl LeaseStore for DynamoDbStore {
    fn name(&self) -> &'static str {
        "dynamodb"
    }

    fn acquire_mutex(&self, req: &MutexRequest<'_>) -> Result<Option<MutexLock>> {
        self.grant_mutex(req)
    }

    fn acquire_permit(&self, req: &PermitRequest<'_>) -> Result<Option<MutexLock>> {
        self.grant_permit(req)
    }

    fn renew(&self, req: &RenewRequest<'_>) -> Result<Option<MutexLock>> {
        self.renew_lease(req)
    }

    fn release(&self, req: &ReleaseRequest<'_>) -> Result<bool> {
        self.release_lease(req)
    }
}

impl AdminStore for DynamoDbStore {
    fn migrate(&self) -> Result<()> {
        self.ensure_table(&self.mutex_table)?;
        self.ensure_table(&self.semaphore_table)
    }

    fn get_mutex(&self, tenant_id: &str, key: &str) -> Result<Option<MutexLock>> {
        self.read_mutex(tenant_id, key)
    }

    fn delete_mutex(&self, tenant_id: &str, key: &str, version: Option<&str>) -> Result<bool> {
        self.remove_mutex(tenant_id, key, version)
    }

    fn put_semaphore(&self, semaphore: &Semaphore) -> Result<Semaphore> {
        self.write_semaphore(semaphore)
    }

    fn get_semaphore(&self, tenant_id: &str, key: &str) -> Result<Option<Semaphore>> {
        self.semaphore_record(tenant_id, key)
    }

    fn delete_semaphore(&self, tenant_id: &str, key: &str) -> Result<bool> {
        self.remove_semaphore(tenant_id, key)
    }

    fn semaphore_mutexes(&self, tenant_id: &str, key: &str) -> Result<Option<Vec<MutexLock>>> {
        self.slot_records(tenant_id, key)
    }

    fn list_mutexes(&self, tenant_id: &str) -> Result<Vec<MutexLock>> {
        self.mutex_records(tenant_id)
    }

    fn list_semaphores(&self, tenant_id: &str) -> Result<Vec<Semaphore>> {
        self.semaphore_records(tenant_id)
    }
}
