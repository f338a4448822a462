//! The DynamoDB store (Amazon DynamoDB, or a compatible server such as DynamoDB Local, moto or
//! dynalite), over the official `aws-sdk-dynamodb`.
//!
//! # Blocking
//!
//! The store owns a small current-thread tokio runtime and blocks on it for every request, so
//! the library stays synchronous. It must not be called from inside an async runtime (including
//! `spawn_blocking` closures, which run inside one): it then fails with
//! [`LockError::Config`] instead of panicking. Call it from a plain thread
//! (`std::thread::spawn`) instead. Every request is bounded by
//! [`LocksConfig::io_timeout_ms`] (the SDK's operation timeout, retries included) and
//! connecting by [`LocksConfig::connect_timeout_ms`]. Region, credentials and endpoint come
//! from the AWS default chain; `dynamodb_region` and `dynamodb_endpoint` override them.
//!
//! # Tables
//!
//! Both tables have a string partition key `pk` and a string sort key `sk`, on-demand billing,
//! no secondary index. [`LockStore::migrate`] creates them if missing and waits until they are
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
//! `dynamodb_trust_expiry_with_skew_ms = Some(skew)`, a waiter instead trusts the
//! `expires_at_ms` the holder wrote (the holder's wall clock plus the lease) plus `skew`
//! milliseconds, which takes over as soon as that time has passed but relies on the clocks
//! being within `skew` of each other. Either way `expires_at` in records is the writer's clock
//! plus the lease, and busy counts compare it with the local clock (they are reports, not
//! decisions).
//!
//! # Cost per operation
//!
//! For items under 1 KB (more `data` costs one write unit per KB): reads here are strongly
//! consistent (1 RCU per 4 KB read), writes cost 1 WCU per KB, rejected conditional writes too.
//!
//! | operation | requests | units |
//! |---|---|---|
//! | acquire mutex (granted or busy) | 1 `UpdateItem` | 1 WCU |
//! | renew, release | 1 `UpdateItem` | 1 WCU (release with `delete = None` of an unflagged record: 2) |
//! | get mutex | 1 `GetItem` | 1 RCU |
//! | delete mutex | 1 `UpdateItem` | 1 WCU |
//! | acquire permit, one of two random slots free | 1–2 `UpdateItem` + 1 `GetItem` | 1–2 WCU + 1 RCU (+1 RCU on a process's first use of the semaphore) |
//! | acquire permit, both probes busy | 2 `UpdateItem` + 1 `Query` (+1 `UpdateItem` per free slot tried) + 1 `GetItem` | 2–3 WCU + 1 RCU per 4 KB of slots (~16 slots) + 1 RCU |
//! | after a shrink, while retired slots drain | + 1 `BatchGetItem` per 100 retired slots | + 1 RCU per retired slot |
//! | create / resize semaphore | 1 `GetItem` + 1 `PutItem` per new slot + 1 `UpdateItem` + get semaphore | 1 RCU + 1 WCU per new slot + 1 WCU + … |
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
//! is deleted again or re-created with [`LockStore::put_semaphore`].
//!
//! # Test servers
//!
//! The protocol relies on DynamoDB applying each conditional write atomically. moto's threaded
//! server (`moto_server`) evaluates a condition and applies the update without a lock, so
//! concurrent writers can both succeed there; run it with requests serialised (or use
//! DynamoDB Local) when testing mutual exclusion.

mod item;
mod watch;

use std::future::Future;
use std::ops::Range;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;
use parking_lot::Mutex;
use rand::seq::SliceRandom;
use rand::Rng;

use self::item::*;
use self::watch::{looks_live, now_ms, Takeover, Watcher};
use super::{AcquireRequest, LockStore, ReleaseRequest, RenewRequest};
use crate::config::LocksConfig;
use crate::error::{LockError, Redactor, Result};
use crate::model::{slot_key, MutexLock, Semaphore};

/// Random slots tried before a permit acquire reads all slots.
const PROBES: usize = 2;
/// Times a permit acquire starts over when the semaphore changes under it.
const PERMIT_ROUNDS: usize = 4;
/// Slot items created at once when a semaphore grows.
const SLOT_WRITE_CONCURRENCY: usize = 16;
/// Longest wait for a new table to become active.
const TABLE_WAIT: Duration = Duration::from_secs(300);
/// Semaphores remembered per store (version, size) between acquires.
const MAX_CACHED_SEMAPHORES: usize = 10_000;
/// Service error codes that a later retry may get past.
const RETRYABLE_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "LimitExceededException",
    "TransactionConflictException",
    "ReplicatedWriteConflictException",
];
const IN_RUNTIME: &str =
    "the DynamoDB store blocks on a runtime of its own and cannot be called from \
    inside an async runtime (or a spawn_blocking task); call it from a plain thread \
    (std::thread::spawn)";

/// Outcome of a conditional write.
enum Written {
    /// Written; the item as `ReturnValues` asked.
    Done(Option<Item>),
    /// The condition was false; the item as it is (`None`: there is none).
    Rejected(Option<Item>),
}

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

impl DynamoDbStore {
    /// Builds the client from the AWS default chain with the overrides of `config`, and creates
    /// the tables if `config.run_migrations` is set.
    pub fn connect(config: &LocksConfig) -> Result<DynamoDbStore> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(LockError::Config(IN_RUNTIME.into()));
        }
        for (what, name) in [
            ("dynamodb_mutex_table", &config.dynamodb_mutex_table),
            ("dynamodb_semaphore_table", &config.dynamodb_semaphore_table),
        ] {
            if name.len() < 3 || name.len() > 255 {
                return Err(LockError::Config(format!(
                    "{what} `{name}` is not a valid DynamoDB table name (3 to 255 characters)"
                )));
            }
        }
        if config.dynamodb_mutex_table == config.dynamodb_semaphore_table {
            return Err(LockError::Config(
                "dynamodb_mutex_table and dynamodb_semaphore_table must differ".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LockError::Store(format!("cannot start the DynamoDB runtime: {e}")))?;
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout())
            .operation_timeout(config.io_timeout())
            .operation_attempt_timeout(config.io_timeout())
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
        if let Some(region) = &config.dynamodb_region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &config.dynamodb_endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk_config = runtime.block_on(loader.load());
        if sdk_config.region().is_none() {
            return Err(LockError::Config(
                "no AWS region for DynamoDB: set dynamodb_region, AWS_REGION or a profile's region"
                    .into(),
            ));
        }
        let takeover = Takeover {
            skew_ms: config
                .dynamodb_trust_expiry_with_skew_ms
                .map(|skew| skew.min(i64::MAX as u64 / 2) as i64),
        };
        let store = DynamoDbStore {
            runtime: Some(runtime),
            client: Client::new(&sdk_config),
            mutex_table: config.dynamodb_mutex_table.clone(),
            semaphore_table: config.dynamodb_semaphore_table.clone(),
            watcher: Watcher::new(takeover),
            semaphores: Mutex::new(Default::default()),
            redactor: Redactor::for_url(config.dynamodb_endpoint.as_deref().unwrap_or("")),
        };
        if config.run_migrations {
            store.migrate()?;
        }
        Ok(store)
    }

    /// Runs one request (or a few) to completion on the store's runtime.
    fn run<F: Future>(&self, fut: F) -> Result<F::Output> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(LockError::Config(IN_RUNTIME.into()));
        }
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| LockError::Store("the DynamoDB store is shutting down".into()))?;
        Ok(runtime.block_on(fut))
    }

    /// Maps an SDK error: throttling, timeouts, connection trouble and server errors are
    /// retryable ([`LockError::Unavailable`]), the rest is [`LockError::Store`].
    fn sdk_error<E>(&self, table: &str, op: &str, err: SdkError<E>) -> LockError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let detail = self.redactor.clean(DisplayErrorContext(&err));
        let msg = format!("DynamoDB {op} on table `{table}` failed: {detail}");
        match &err {
            SdkError::TimeoutError(_) | SdkError::ResponseError(_) => LockError::Unavailable(msg),
            SdkError::DispatchFailure(failure) if !failure.is_user() => LockError::Unavailable(msg),
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or_default();
                if code == "ResourceNotFoundException" {
                    LockError::Store(format!(
                        "DynamoDB table `{table}` does not exist or is not active: create it by \
                         running the migrations (run_migrations = true, or LockManager::migrate)"
                    ))
                } else if RETRYABLE_CODES.contains(&code)
                    || service.raw().status().is_server_error()
                {
                    LockError::Unavailable(msg)
                } else {
                    LockError::Store(msg)
                }
            }
            _ => LockError::Store(msg),
        }
    }

    // ----- requests ---------------------------------------------------------------------

    /// Writes a grant (`update` under `condition`) to the mutex table and reads the outcome:
    /// the granted record, or `None` when the item is held, which the watcher then notes for
    /// a later takeover. A rejection that shows the item held with our own version is our own
    /// grant, made by an earlier attempt whose reply was lost: it is re-granted in place.
    fn write_grant(
        &self,
        key: &Key,
        update: &str,
        condition: &str,
        params: &Params,
        version: &str,
    ) -> Result<Option<Item>> {
        match self.update(
            &self.mutex_table,
            key,
            update,
            Some(condition),
            params,
            ReturnValue::AllNew,
        )? {
            Written::Done(Some(item)) => {
                self.watcher.own_write(key, &item);
                Ok(Some(item))
            }
            Written::Done(None) => Err(LockError::Store(
                "DynamoDB UpdateItem returned no attributes".into(),
            )),
            Written::Rejected(Some(item))
                if get_bool(&item, LOCKED) && get_s(&item, VERSION) == Some(version) =>
            {
                self.regrant(key, version, params)
            }
            Written::Rejected(item) => {
                if let Some(item) = item {
                    self.watcher.observe(key, &item);
                }
                Ok(None)
            }
        }
    }

    /// Restarts the lease of a grant held with `version`, keeping its fencing token: a retry
    /// that found its own earlier grant. `params` are the grant's (`:rvn`, `:lease`, `:expires`,
    /// and `:data` if it sets data). The new rvn restarts the watch of every waiter, whose
    /// observation of the earlier rvn began before our lease (counted from this retry) did.
    fn regrant(&self, key: &Key, version: &str, params: &Params) -> Result<Option<Item>> {
        let mut update =
            "SET #rvn = :rvn, #lease_duration_ms = :lease, #expires_at_ms = :expires".to_owned();
        if params.has(":data") {
            update.push_str(", #data = :data");
        }
        let params = params.clone().s(":version", version).b(":true", true);
        // Invariant: only a grant held with this version is restarted, and never a free one.
        match self.update(
            &self.mutex_table,
            key,
            &update,
            Some("#locked = :true AND #version = :version"),
            &params,
            ReturnValue::AllNew,
        )? {
            Written::Done(Some(item)) => {
                self.watcher.own_write(key, &item);
                Ok(Some(item))
            }
            Written::Done(None) => Err(LockError::Store(
                "DynamoDB UpdateItem returned no attributes".into(),
            )),
            Written::Rejected(_) => Ok(None),
        }
    }

    /// One `UpdateItem`: `update` if `condition` holds. A rejected write returns the item as it
    /// is (`ReturnValuesOnConditionCheckFailure = ALL_OLD`), at no extra cost.
    fn update(
        &self,
        table: &str,
        key: &Key,
        update: &str,
        condition: Option<&str>,
        params: &Params,
        return_values: ReturnValue,
    ) -> Result<Written> {
        let exprs: Vec<&str> = std::iter::once(update).chain(condition).collect();
        let fut = self
            .client
            .update_item()
            .table_name(table)
            .set_key(Some(key.to_item()))
            .update_expression(update)
            .set_condition_expression(condition.map(str::to_owned))
            .set_expression_attribute_names(Params::names_for(&exprs))
            .set_expression_attribute_values(params.values_for(&exprs))
            .return_values(return_values)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send();
        match self.run(fut)? {
            Ok(out) => Ok(Written::Done(out.attributes)),
            Err(SdkError::ServiceError(service))
                if matches!(
                    service.err(),
                    UpdateItemError::ConditionalCheckFailedException(_)
                ) =>
            {
                match service.into_err() {
                    UpdateItemError::ConditionalCheckFailedException(e) => {
                        Ok(Written::Rejected(e.item))
                    }
                    _ => unreachable!("matched above"),
                }
            }
            Err(e) => Err(self.sdk_error(table, "UpdateItem", e)),
        }
    }

    /// One strongly consistent `GetItem`.
    fn get(&self, table: &str, key: &Key) -> Result<Option<Item>> {
        let fut = self
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(key.to_item()))
            .consistent_read(true)
            .send();
        let out = self
            .run(fut)?
            .map_err(|e| self.sdk_error(table, "GetItem", e))?;
        Ok(out.item)
    }

    /// A strongly consistent `Query` of partition `pk`, all pages, in sort key order.
    fn query(&self, table: &str, pk: &str, filter: Option<&str>) -> Result<Vec<Item>> {
        let key_condition = "#pk = :pk";
        let exprs: Vec<&str> = std::iter::once(key_condition).chain(filter).collect();
        let params = Params::new().s(":pk", pk);
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let fut = self
                .client
                .query()
                .table_name(table)
                .key_condition_expression(key_condition)
                .set_filter_expression(filter.map(str::to_owned))
                .set_expression_attribute_names(Params::names_for(&exprs))
                .set_expression_attribute_values(params.values_for(&exprs))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send();
            let out = self
                .run(fut)?
                .map_err(|e| self.sdk_error(table, "Query", e))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }

    // ----- tables -----------------------------------------------------------------------

    /// Creates `table` if it is missing, and waits until it is active.
    fn ensure_table(&self, table: &str) -> Result<()> {
        let deadline = Instant::now() + TABLE_WAIT;
        let mut created = false;
        loop {
            let fut = self.client.describe_table().table_name(table).send();
            match self.run(fut)? {
                Ok(out) => {
                    let desc = out.table.ok_or_else(|| {
                        LockError::Store(format!("DynamoDB DescribeTable `{table}`: no table"))
                    })?;
                    let keys: Vec<(&str, &KeyType)> = desc
                        .key_schema()
                        .iter()
                        .map(|k| (k.attribute_name(), k.key_type()))
                        .collect();
                    if keys != [(PK, &KeyType::Hash), (SK, &KeyType::Range)] {
                        return Err(LockError::Store(format!(
                            "DynamoDB table `{table}` exists with another key schema than \
                             (pk HASH, sk RANGE): {keys:?}; choose another table name"
                        )));
                    }
                    if desc.table_status() == Some(&TableStatus::Active) {
                        return Ok(());
                    }
                }
                Err(SdkError::ServiceError(service))
                    if service.err().code() == Some("ResourceNotFoundException") && !created =>
                {
                    self.create_table(table)?;
                    created = true;
                    continue;
                }
                Err(e) => return Err(self.sdk_error(table, "DescribeTable", e)),
            }
            if Instant::now() >= deadline {
                return Err(LockError::Unavailable(format!(
                    "DynamoDB table `{table}` did not become active within {} s",
                    TABLE_WAIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn create_table(&self, table: &str) -> Result<()> {
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        let key = |name: &str, key_type| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(key_type)
                .build()
        };
        let build_error = |e: aws_sdk_dynamodb::error::BuildError| {
            LockError::Store(format!("DynamoDB CreateTable `{table}`: {e}"))
        };
        let fut = self
            .client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute(PK).map_err(build_error)?)
            .attribute_definitions(attribute(SK).map_err(build_error)?)
            .key_schema(key(PK, KeyType::Hash).map_err(build_error)?)
            .key_schema(key(SK, KeyType::Range).map_err(build_error)?)
            .send();
        match self.run(fut)? {
            Ok(_) => {
                log::info!("db-locks: created DynamoDB table `{table}`");
                Ok(())
            }
            // Another process created it first.
            Err(SdkError::ServiceError(service))
                if service.err().code() == Some("ResourceInUseException") =>
            {
                Ok(())
            }
            Err(e) => Err(self.sdk_error(table, "CreateTable", e)),
        }
    }

    // ----- mutexes ----------------------------------------------------------------------

    /// Marks a held record free. Returns whether it was held with `version` or `in_doubt`.
    fn mark_free(
        &self,
        key: &Key,
        version: &str,
        in_doubt: Option<&str>,
        data: Option<&str>,
    ) -> Result<bool> {
        let mut params = Params::new()
            .b(":true", true)
            .b(":false", false)
            .s(":version", version)
            .s(":in_doubt", in_doubt.unwrap_or(version))
            .n(":now", now_ms());
        let mut update = "SET #locked = :false, #expires_at_ms = :now".to_owned();
        if let Some(d) = data {
            update.push_str(", #data = :data");
            params = params.s(":data", d);
        }
        // Invariant: only the current holder releases (compare-and-set on the version, or on the
        // new version of a renewal whose outcome the holder does not know). The item and its
        // fencing token stay, so the next grant's token is higher.
        let condition = "#locked = :true AND #version IN (:version, :in_doubt)";
        let written = self.update(
            &self.mutex_table,
            key,
            &update,
            Some(condition),
            &params,
            ReturnValue::None,
        )?;
        Ok(match written {
            Written::Done(_) => {
                self.watcher.forget(key);
                true
            }
            Written::Rejected(_) => false,
        })
    }

    /// Turns a plain mutex into a tombstone: reads treat it as absent, and it keeps the
    /// fencing token so that the next grant of the key continues above it. `condition` says
    /// who may do so.
    fn tombstone(&self, key: &Key, condition: &str, params: Params) -> Result<Written> {
        let params = params
            .b(":true", true)
            .b(":false", false)
            .n(":now", now_ms());
        let update = "SET #locked = :false, #deleted = :true, #delete_on_release = :false, \
            #expires_at_ms = :now REMOVE #data";
        let written = self.update(
            &self.mutex_table,
            key,
            update,
            Some(condition),
            &params,
            ReturnValue::None,
        )?;
        if matches!(written, Written::Done(_)) {
            self.watcher.forget(key);
        }
        Ok(written)
    }

    // ----- semaphores -------------------------------------------------------------------

    fn cached_semaphore(&self, tenant_id: &str, key: &str) -> Option<SemaphoreInfo> {
        self.semaphores
            .lock()
            .get(&(tenant_id.to_owned(), key.to_owned()))
            .cloned()
    }

    fn cache_semaphore(&self, tenant_id: &str, key: &str, info: Option<&SemaphoreInfo>) {
        let mut cache = self.semaphores.lock();
        let k = (tenant_id.to_owned(), key.to_owned());
        match info {
            Some(info) => {
                if cache.len() >= MAX_CACHED_SEMAPHORES {
                    cache.clear();
                }
                cache.insert(k, info.clone());
            }
            None => {
                cache.remove(&k);
            }
        }
    }

    /// Reads a semaphore (strongly consistent); `None` if missing or deleted.
    fn read_semaphore(&self, tenant_id: &str, key: &str) -> Result<Option<SemaphoreInfo>> {
        let item = self.get(&self.semaphore_table, &Key::semaphore(tenant_id, key))?;
        let info = match item {
            Some(item) => SemaphoreInfo::from_item(&item)?,
            None => None,
        };
        self.cache_semaphore(tenant_id, key, info.as_ref());
        Ok(info)
    }

    fn not_found(key: &str) -> LockError {
        LockError::NotFound(format!("semaphore `{key}` does not exist"))
    }

    /// The slot items of a semaphore, by slot index.
    fn slots(&self, tenant_id: &str, key: &str) -> Result<Vec<(i64, Item)>> {
        let items = self.query(&self.mutex_table, &mutex_partition(tenant_id, key), None)?;
        let mut slots: Vec<(i64, Item)> = items
            .into_iter()
            .filter_map(|item| get_n(&item, SLOT_INDEX).map(|i| (i, item)))
            .collect();
        slots.sort_by_key(|(i, _)| *i);
        Ok(slots)
    }

    /// Live permits by their writers' clocks (a report, not a decision).
    fn busy_count(&self, tenant_id: &str, key: &str) -> Result<i64> {
        let now = now_ms();
        Ok(self
            .slots(tenant_id, key)?
            .iter()
            .filter(|(_, item)| looks_live(item, now))
            .count() as i64)
    }

    /// Creates the slot items `range` that do not exist yet, a few at a time.
    fn create_slots(&self, tenant_id: &str, key: &str, range: Range<i64>) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let table = self.mutex_table.clone();
        let pk = mutex_partition(tenant_id, key);
        let now = now_ms().to_string();
        // Invariant: creating a slot never overwrites one: an existing slot (perhaps held) keeps
        // its holder and its fencing token.
        let condition = "attribute_not_exists(#pk)";
        let names = Params::names_for(&[condition]);
        let requests: Vec<_> = range
            .map(|i| {
                let item = Item::from([
                    (PK.to_owned(), AttributeValue::S(pk.clone())),
                    (SK.to_owned(), AttributeValue::S(slot_key(key, i))),
                    (
                        TENANT_ID.to_owned(),
                        AttributeValue::S(tenant_id.to_owned()),
                    ),
                    (SEMAPHORE_KEY.to_owned(), AttributeValue::S(key.to_owned())),
                    (SLOT_INDEX.to_owned(), AttributeValue::N(i.to_string())),
                    (VERSION.to_owned(), AttributeValue::S(String::new())),
                    (FENCING_TOKEN.to_owned(), AttributeValue::N("0".into())),
                    (LEASE_DURATION_MS.to_owned(), AttributeValue::N("0".into())),
                    (LOCKED.to_owned(), AttributeValue::Bool(false)),
                    (DELETE_ON_RELEASE.to_owned(), AttributeValue::Bool(false)),
                    (EXPIRES_AT_MS.to_owned(), AttributeValue::N(now.clone())),
                ]);
                self.client
                    .put_item()
                    .table_name(&table)
                    .set_item(Some(item))
                    .condition_expression(condition)
                    .set_expression_attribute_names(names.clone())
            })
            .collect();
        let fut = async move {
            let mut requests = requests.into_iter();
            let mut running = tokio::task::JoinSet::new();
            loop {
                while running.len() < SLOT_WRITE_CONCURRENCY {
                    match requests.next() {
                        Some(request) => {
                            running.spawn(request.send());
                        }
                        None => break,
                    }
                }
                match running.join_next().await {
                    None => return Ok(()),
                    Some(Ok(Ok(_))) => {}
                    Some(Ok(Err(SdkError::ServiceError(service))))
                        if service.err().code() == Some("ConditionalCheckFailedException") => {}
                    Some(Ok(Err(e))) => return Err(Ok(e)),
                    Some(Err(join)) => return Err(Err(join.to_string())),
                }
            }
        };
        match self.run(fut)? {
            Ok(()) => Ok(()),
            Err(Ok(e)) => Err(self.sdk_error(&self.mutex_table, "PutItem", e)),
            Err(Err(e)) => Err(LockError::Store(format!(
                "creating semaphore slots failed: {e}"
            ))),
        }
    }

    /// Settles the semaphore's `retired` positions (at or above `max_size`, possibly held):
    /// a slot there that is free, or whose holder's lease is provably over (then freed), leaves
    /// the set; a slot there that may still be live swaps positions with a free active slot, if
    /// there is one, so that it counts against `max_size` in that slot's place. Returns whether
    /// no retired position is still held, i.e. whether permits may be granted.
    /// Cost (only while a shrink drains): a `Query` of the slots, a write per slot settled.
    fn drain_retired(&self, info: &mut SemaphoreInfo) -> Result<bool> {
        if info.retired.is_empty() {
            return Ok(true);
        }
        let (tenant_id, key) = (info.tenant_id.clone(), info.semaphore_key.clone());
        let slots = self.slots(&tenant_id, &key)?;
        let at = |position: i64| slots.iter().find(|(i, _)| *i == position).map(|(_, s)| s);
        let mut settled = Vec::new();
        let mut held = Vec::new();
        for &position in &info.retired {
            let Some(item) = at(position) else {
                settled.push(position);
                continue;
            };
            if !get_bool(item, LOCKED) || self.free_lapsed_slot(item)? {
                settled.push(position);
            } else {
                held.push((position, item));
            }
        }
        // Free active slots to swap with: not locked at all (a lapsed one is freed by a grant).
        let mut free_active: Vec<(i64, &Item)> = slots
            .iter()
            .filter(|(i, item)| *i < info.max_size && !get_bool(item, LOCKED))
            .map(|(i, item)| (*i, item))
            .collect();
        free_active.shuffle(&mut rand::rng());
        let mut still_held = false;
        for (position, item) in held {
            let Some((free_position, free_item)) = free_active.pop() else {
                still_held = true;
                continue;
            };
            if self.swap_positions(info, (position, item), (free_position, free_item))? {
                settled.push(position);
            } else {
                still_held = true;
            }
        }
        if !settled.is_empty() {
            let params = Params::new()
                .ns(":settled", &settled)
                .s(":version", info.version.as_str());
            // Invariant: only positions seen settled leave `retired`, and only under the
            // semaphore version that retired them (a resize in between computed its own set).
            let written = self.update(
                &self.semaphore_table,
                &Key::semaphore(&tenant_id, &key),
                "DELETE #retired :settled",
                Some("#version = :version"),
                &params,
                ReturnValue::None,
            )?;
            if matches!(written, Written::Done(_)) {
                info.retired.retain(|i| !settled.contains(i));
                self.cache_semaphore(&tenant_id, &key, Some(info));
            }
        }
        Ok(!still_held)
    }

    /// Frees a held slot whose holder's lease is provably over (the takeover rule of a grant);
    /// a late renewal then finds it free and fails. Returns whether it is free now.
    fn free_lapsed_slot(&self, item: &Item) -> Result<bool> {
        let slot = Key::mutex_of(item)?;
        self.watcher.observe(&slot, item);
        let mut params = Params::new()
            .b(":true", true)
            .b(":false", false)
            .n(":now", now_ms());
        let Some(takeover) = self.watcher.takeover_clause(&slot, &mut params) else {
            return Ok(false);
        };
        let condition = format!("#locked = :true AND ({takeover})");
        match self.update(
            &self.mutex_table,
            &slot,
            "SET #locked = :false, #expires_at_ms = :now",
            Some(&condition),
            &params,
            ReturnValue::None,
        )? {
            Written::Done(_) => {
                self.watcher.forget(&slot);
                Ok(true)
            }
            Written::Rejected(Some(item)) if get_bool(&item, LOCKED) => {
                self.watcher.observe(&slot, &item);
                Ok(false)
            }
            Written::Rejected(_) => Ok(true),
        }
    }

    /// Swaps the positions of a held retired slot and a free active one, in one transaction
    /// that also checks the semaphore's version. Afterwards the held slot is active (its holder
    /// keeps its key, version and token) and the free one is retired. Returns whether it
    /// happened (a grant of the free slot, a release, or a resize in between cancels it).
    ///
    /// Invariant: the positions stay a permutation of `0..slot_count`, so exactly `max_size`
    /// slots are below `max_size`. A grant conditions on the slot's position server-side
    /// (`#slot_index < :max`), so it cannot take the free slot once it has moved up.
    fn swap_positions(
        &self,
        info: &SemaphoreInfo,
        (held_position, held): (i64, &Item),
        (free_position, free): (i64, &Item),
    ) -> Result<bool> {
        use aws_sdk_dynamodb::types::{ConditionCheck, TransactWriteItem, Update};
        let build_error =
            |e: aws_sdk_dynamodb::error::BuildError| LockError::Store(format!("DynamoDB: {e}"));
        let move_to = |item: &Item, from: i64, to: i64, extra: &str| -> Result<TransactWriteItem> {
            let condition = format!("#slot_index = :from{extra}");
            let update = "SET #slot_index = :to";
            let params = Params::new()
                .n(":from", from)
                .n(":to", to)
                .b(":false", false);
            let exprs = [update, condition.as_str()];
            let op = Update::builder()
                .table_name(&self.mutex_table)
                .set_key(Some(Key::mutex_of(item)?.to_item()))
                .update_expression(update)
                .condition_expression(&condition)
                .set_expression_attribute_names(Params::names_for(&exprs))
                .set_expression_attribute_values(params.values_for(&exprs))
                .build()
                .map_err(build_error)?;
            Ok(TransactWriteItem::builder().update(op).build())
        };
        let check_condition = "#version = :version";
        let check_params = Params::new().s(":version", info.version.as_str());
        let check = ConditionCheck::builder()
            .table_name(&self.semaphore_table)
            .set_key(Some(
                Key::semaphore(&info.tenant_id, &info.semaphore_key).to_item(),
            ))
            .condition_expression(check_condition)
            .set_expression_attribute_names(Params::names_for(&[check_condition]))
            .set_expression_attribute_values(check_params.values_for(&[check_condition]))
            .build()
            .map_err(build_error)?;
        let fut = self
            .client
            .transact_write_items()
            .transact_items(move_to(held, held_position, free_position, "")?)
            .transact_items(move_to(
                free,
                free_position,
                held_position,
                " AND #locked = :false",
            )?)
            .transact_items(TransactWriteItem::builder().condition_check(check).build())
            .send();
        match self.run(fut)? {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(service))
                if service.err().code() == Some("TransactionCanceledException") =>
            {
                Ok(false)
            }
            Err(e) => Err(self.sdk_error(&self.mutex_table, "TransactWriteItems", e)),
        }
    }

    /// Tries to grant slot `slot` (an item key). `Ok(None)`: busy, missing, or not at a
    /// position below `max_size`. Returns the granted slot's position with the record.
    fn try_slot(
        &self,
        req: &AcquireRequest<'_>,
        info: &SemaphoreInfo,
        slot: &Key,
        lease_ms: i64,
    ) -> Result<Option<(i64, MutexLock)>> {
        let now = now_ms();
        let mut params = Params::new()
            .s(":version", req.version)
            .s(":rvn", uuid::Uuid::new_v4().to_string())
            .n(":lease", lease_ms)
            .n(":expires", now.saturating_add(lease_ms))
            .b(":true", true)
            .b(":false", false)
            .n(":one", 1)
            .n(":max", info.max_size);
        let mut update = "SET #version = :version, #rvn = :rvn, #lease_duration_ms = :lease, \
            #expires_at_ms = :expires, #locked = :true, #delete_on_release = :false"
            .to_owned();
        if let Some(d) = req.data {
            update.push_str(", #data = :data");
            params = params.s(":data", d);
        }
        update.push_str(" ADD #fencing_token :one");
        // Invariant: at most max_size live permits. A slot is granted only if it exists, its
        // position lies below the max_size the caller read, and it is free or its holder's
        // lease is provably over; the caller then checks that the semaphore did not change
        // meanwhile.
        let mut condition =
            "attribute_exists(#pk) AND #slot_index < :max AND (#locked = :false".to_owned();
        if let Some(takeover) = self.watcher.takeover_clause(slot, &mut params) {
            condition.push_str(" OR ");
            condition.push_str(takeover);
        }
        condition.push(')');
        let Some(item) = self.write_grant(slot, &update, &condition, &params, req.version)? else {
            return Ok(None);
        };
        let position = get_n(&item, SLOT_INDEX)
            .ok_or_else(|| LockError::Store(format!("slot `{}` has no position", slot.sk)))?;
        Ok(Some((position, to_mutex(&item)?)))
    }

    /// Grants a slot at a position below `info.max_size`: a couple of random probes, then a
    /// read of all slots to find the free ones. Returns the slot's position with the record.
    fn grant_slot(
        &self,
        req: &AcquireRequest<'_>,
        info: &SemaphoreInfo,
        lease_ms: i64,
    ) -> Result<Option<(i64, MutexLock)>> {
        let size = info.max_size;
        if size <= 0 {
            return Ok(None);
        }
        let mut rng = rand::rng();
        let start = rng.random_range(0..size);
        let probes = (PROBES as i64).min(size);
        // Probes by name: a slot's position is its number unless a shrink swapped it, and a
        // slot that has moved up fails the position condition.
        for p in 0..probes {
            let number = (start + p * (size / probes).max(1)) % size;
            let slot = Key::mutex(req.tenant_id, Some(req.key), &slot_key(req.key, number));
            if let Some(granted) = self.try_slot(req, info, &slot, lease_ms)? {
                return Ok(Some(granted));
            }
        }
        let mut candidates = Vec::new();
        for (position, item) in self.slots(req.tenant_id, req.key)? {
            if position >= size {
                continue;
            }
            let slot = Key::mutex_of(&item)?;
            if get_bool(&item, LOCKED) && self.watcher.may_be_live(&slot, &item) {
                continue;
            }
            candidates.push(slot);
        }
        candidates.shuffle(&mut rng);
        for slot in candidates {
            if let Some(granted) = self.try_slot(req, info, &slot, lease_ms)? {
                return Ok(Some(granted));
            }
        }
        Ok(None)
    }

    /// A retry's own permit: the slot held with `req.version` (an earlier attempt granted it,
    /// but its reply was lost), re-granted in place. Reads every slot: retries only.
    fn own_permit(
        &self,
        req: &AcquireRequest<'_>,
        info: &SemaphoreInfo,
    ) -> Result<Option<MutexLock>> {
        let lease_ms = if req.lease_ms > 0 {
            req.lease_ms
        } else {
            info.lease_ms
        };
        for (_, item) in self.slots(req.tenant_id, req.key)? {
            if get_bool(&item, LOCKED) && get_s(&item, VERSION) == Some(req.version) {
                let mut params = Params::new()
                    .s(":rvn", uuid::Uuid::new_v4().to_string())
                    .n(":lease", lease_ms)
                    .n(":expires", now_ms().saturating_add(lease_ms));
                if let Some(d) = req.data {
                    params = params.s(":data", d);
                }
                return self
                    .regrant(&Key::mutex_of(&item)?, req.version, &params)?
                    .map(|item| to_mutex(&item))
                    .transpose();
            }
        }
        Ok(None)
    }
}

impl LockStore for DynamoDbStore {
    fn name(&self) -> &'static str {
        "dynamodb"
    }

    fn migrate(&self) -> Result<()> {
        self.ensure_table(&self.mutex_table)?;
        self.ensure_table(&self.semaphore_table)
    }

    fn try_acquire_mutex(&self, req: &AcquireRequest<'_>) -> Result<Option<MutexLock>> {
        let key = Key::mutex(req.tenant_id, None, req.key);
        let now = now_ms();
        let mut params = Params::new()
            .s(":tenant", req.tenant_id)
            .s(":version", req.version)
            .s(":rvn", uuid::Uuid::new_v4().to_string())
            .n(":lease", req.lease_ms)
            .n(":expires", now.saturating_add(req.lease_ms))
            .b(":true", true)
            .b(":false", false)
            .b(":dor", req.delete_on_release)
            .n(":one", 1);
        let mut update = "SET #tenant_id = :tenant, #version = :version, #rvn = :rvn, \
            #lease_duration_ms = :lease, #expires_at_ms = :expires, #locked = :true, \
            #delete_on_release = :dor"
            .to_owned();
        if let Some(d) = req.data {
            update.push_str(", #data = :data");
            params = params.s(":data", d);
        }
        update.push_str(" REMOVE #deleted ADD #fencing_token :one");
        // Invariant: at most one live holder per mutex. The grant is written only if the item
        // is new, free (released, or a tombstone), or its holder's lease is provably over (see
        // `watch`). ADD raises the fencing token of the same item by one per grant; tombstones
        // keep it, so it also grows across deletion.
        let mut condition = "attribute_not_exists(#pk) OR #locked = :false".to_owned();
        if let Some(takeover) = self.watcher.takeover_clause(&key, &mut params) {
            condition.push_str(" OR ");
            condition.push_str(takeover);
        }
        self.write_grant(&key, &update, &condition, &params, req.version)?
            .map(|item| to_mutex(&item))
            .transpose()
    }

    fn try_acquire_permit(&self, req: &AcquireRequest<'_>) -> Result<Option<MutexLock>> {
        let (tenant_id, key) = (req.tenant_id, req.key);
        // A cached record saves a read; anything unusual is read afresh.
        let cached = self
            .cached_semaphore(tenant_id, key)
            .filter(|info| !info.deleting && info.retired.is_empty());
        let mut from_cache = cached.is_some();
        let mut info = match cached {
            Some(info) => info,
            None => self
                .read_semaphore(tenant_id, key)?
                .ok_or_else(|| Self::not_found(key))?,
        };
        if req.retry {
            if let Some(own) = self.own_permit(req, &info)? {
                return Ok(Some(own));
            }
        }
        for _ in 0..PERMIT_ROUNDS {
            if info.deleting {
                return Ok(None);
            }
            // No permit while a slot retired by a shrink may still be held (after it has been
            // swapped with any free active slot there is).
            if !self.drain_retired(&mut info)? {
                return Ok(None);
            }
            let lease_ms = if req.lease_ms > 0 {
                req.lease_ms
            } else {
                info.lease_ms
            };
            let Some((index, lock)) = self.grant_slot(req, &info, lease_ms)? else {
                if !from_cache {
                    return Ok(None);
                }
                // The cached record may be out of date (grown, say): decide on a fresh one.
                let fresh = self
                    .read_semaphore(tenant_id, key)?
                    .ok_or_else(|| Self::not_found(key))?;
                if fresh.version == info.version {
                    return Ok(None);
                }
                (info, from_cache) = (fresh, false);
                continue;
            };
            // The grant was decided on `info`. If the semaphore changed since (resized, being
            // deleted), keep it only if it is valid under the new record as well; otherwise
            // undo it before anyone is told, and start over.
            let now = self.read_semaphore(tenant_id, key)?;
            let valid = now.as_ref().is_some_and(|n| {
                n.version == info.version
                    || (!n.deleting
                        && n.retired.is_empty()
                        && index < n.max_size
                        && (req.lease_ms > 0 || n.lease_ms == info.lease_ms))
            });
            if valid {
                return Ok(Some(lock));
            }
            let slot = Key::mutex(tenant_id, Some(key), &lock.mutex_key);
            if let Err(e) = self.mark_free(&slot, &lock.version, None, None) {
                log::warn!(
                    "db-locks: could not undo a permit of `{key}` granted during a resize; it \
                     stays busy until its lease ends: {e}"
                );
            }
            (info, from_cache) = (now.ok_or_else(|| Self::not_found(key))?, false);
        }
        Ok(None)
    }

    fn renew(&self, req: &RenewRequest<'_>) -> Result<Option<MutexLock>> {
        let key = Key::mutex(req.tenant_id, req.semaphore_key, req.key);
        let now = now_ms();
        let mut params = Params::new()
            .s(":version", req.version)
            .s(":new_version", req.new_version)
            .s(":rvn", uuid::Uuid::new_v4().to_string())
            .n(":lease", req.lease_ms)
            .n(":expires", now.saturating_add(req.lease_ms))
            .n(":now", now)
            .b(":true", true);
        let mut update = "SET #version = :new_version, #rvn = :rvn, #lease_duration_ms = :lease, \
            #expires_at_ms = :expires"
            .to_owned();
        if let Some(d) = req.data {
            update.push_str(", #data = :data");
            params = params.s(":data", d);
        }
        // Invariant: only the current holder renews (compare-and-set on the version), and only a
        // lease that has not run out. The new version is accepted too, so retrying a renewal
        // whose reply was lost succeeds; the rvn changes even then, so a watcher never takes a
        // renewed lease for an abandoned one. "Run out" is judged on the renewer's clock
        // against the expiry the holder wrote: for a guard that is its own clock. A lapsed
        // permit may already have been counted free (a retired slot drained, another granted),
        // and bringing it back could make more than max_size permits live.
        let condition =
            "#locked = :true AND #version IN (:version, :new_version) AND #expires_at_ms > :now";
        match self.update(
            &self.mutex_table,
            &key,
            &update,
            Some(condition),
            &params,
            ReturnValue::AllNew,
        )? {
            Written::Done(Some(item)) => {
                self.watcher.own_write(&key, &item);
                Ok(Some(to_mutex(&item)?))
            }
            Written::Done(None) => Err(LockError::Store(
                "DynamoDB UpdateItem returned no attributes".into(),
            )),
            Written::Rejected(item) => {
                if let Some(item) = item {
                    self.watcher.observe(&key, &item);
                }
                Ok(None)
            }
        }
    }

    fn release(&self, req: &ReleaseRequest<'_>) -> Result<bool> {
        let key = Key::mutex(req.tenant_id, req.semaphore_key, req.key);
        // Permit slots stay: they carry the slot's fencing token and are part of the semaphore.
        let delete = if req.semaphore_key.is_some() {
            Some(false)
        } else {
            req.delete
        };
        let in_doubt = req.in_doubt_version;
        let params = || {
            Params::new()
                .s(":version", req.version)
                .s(":in_doubt", in_doubt.unwrap_or(req.version))
        };
        let held = "#locked = :true AND #version IN (:version, :in_doubt)";
        match delete {
            Some(false) => self.mark_free(&key, req.version, in_doubt, req.data),
            // Invariant: only the current holder deletes on release (compare-and-set on the
            // version); the tombstone keeps the fencing token.
            Some(true) => Ok(matches!(
                self.tombstone(&key, held, params())?,
                Written::Done(_)
            )),
            // As the record's own flag says: delete if it asks for it, else mark it free.
            None => match self.tombstone(
                &key,
                &format!("{held} AND #delete_on_release = :true"),
                params(),
            )? {
                Written::Done(_) => Ok(true),
                Written::Rejected(Some(item))
                    if get_bool(&item, LOCKED)
                        && get_s(&item, VERSION)
                            .is_some_and(|v| v == req.version || Some(v) == in_doubt) =>
                {
                    self.mark_free(&key, req.version, in_doubt, req.data)
                }
                Written::Rejected(_) => Ok(false),
            },
        }
    }

    fn get_mutex(&self, tenant_id: &str, key: &str) -> Result<Option<MutexLock>> {
        let key = Key::mutex(tenant_id, None, key);
        match self.get(&self.mutex_table, &key)? {
            Some(item) if !get_bool(&item, DELETED) => {
                self.watcher.observe(&key, &item);
                Ok(Some(to_mutex(&item)?))
            }
            _ => Ok(None),
        }
    }

    fn delete_mutex(&self, tenant_id: &str, key: &str, version: Option<&str>) -> Result<bool> {
        let mkey = Key::mutex(tenant_id, None, key);
        let written = match version {
            // Invariant: a delete with a version removes that grant only.
            Some(v) => self.tombstone(
                &mkey,
                "#version = :version AND attribute_not_exists(#deleted)",
                Params::new().s(":version", v),
            )?,
            None => {
                let mut params = Params::new();
                let takeover = self.watcher.takeover_clause(&mkey, &mut params);
                // Invariant: an administrative delete never removes a live lease: only a free
                // record, or one whose holder's lease is provably over.
                let condition = format!(
                    "attribute_exists(#pk) AND attribute_not_exists(#deleted) AND \
                     (#locked = :false{})",
                    takeover.map(|t| format!(" OR {t}")).unwrap_or_default()
                );
                self.tombstone(&mkey, &condition, params)?
            }
        };
        match written {
            Written::Done(_) => Ok(true),
            Written::Rejected(Some(item))
                if version.is_none() && !get_bool(&item, DELETED) && get_bool(&item, LOCKED) =>
            {
                self.watcher.observe(&mkey, &item);
                Err(LockError::Conflict(format!(
                    "mutex `{key}` is held by a lease that may be live; release it, or retry once \
                     the lease has run out"
                )))
            }
            Written::Rejected(_) => Ok(false),
        }
    }

    fn put_semaphore(&self, semaphore: &Semaphore) -> Result<Semaphore> {
        let (tenant_id, key) = (
            semaphore.tenant_id.as_str(),
            semaphore.semaphore_key.as_str(),
        );
        let skey = Key::semaphore(tenant_id, key);
        let new_max = semaphore.max_size;
        for _ in 0..8 {
            let old = match self.get(&self.semaphore_table, &skey)? {
                Some(item) => Some(SemaphoreInfo::from_item_any(&item)?),
                None => None,
            };
            let old_slots = old.as_ref().map_or(0, |o| o.slot_count);
            // Growing: the new slots exist before anyone can see the new size.
            self.create_slots(tenant_id, key, old_slots..new_max)?;
            // Slots at or above the new size that may be held: the ones retired before, and
            // every other existing slot up there (the free ones are dropped just below).
            let mut retired: Vec<i64> = old
                .as_ref()
                .map(|o| o.retired.clone())
                .unwrap_or_default()
                .into_iter()
                .chain(new_max..old_slots)
                .filter(|&i| i >= new_max)
                .collect();
            retired.sort_unstable();
            retired.dedup();
            let mut params = Params::new()
                .s(":tenant", tenant_id)
                .s(":version", semaphore.version.as_str())
                .n(":max", new_max)
                .n(":lease", semaphore.lease_duration_ms)
                .n(":slots", old_slots.max(new_max));
            let mut update = "SET #tenant_id = :tenant, #version = :version, #max_size = :max, \
                #lease_duration_ms = :lease, #slot_count = :slots"
                .to_owned();
            if retired.is_empty() {
                update.push_str(" REMOVE #deleted, #deleting, #retired");
            } else {
                update.push_str(", #retired = :retired REMOVE #deleted, #deleting");
                params = params.ns(":retired", &retired);
            }
            // Invariant: resizes never interleave: each is a compare-and-set on the version it
            // read, so the retired set it computed from that read is never lost. A new version
            // also makes permit grants that raced with the resize re-check themselves.
            let condition = match &old {
                Some(o) => {
                    params = params.s(":old_version", o.version.as_str());
                    "#version = :old_version"
                }
                None => "attribute_not_exists(#pk)",
            };
            let written = self.update(
                &self.semaphore_table,
                &skey,
                &update,
                Some(condition),
                &params,
                ReturnValue::AllNew,
            )?;
            let Written::Done(Some(item)) = written else {
                continue; // changed under us: read again
            };
            let mut info = SemaphoreInfo::from_item_any(&item)?;
            self.cache_semaphore(tenant_id, key, Some(&info));
            // Shrinking: free retired slots go at once; held ones when released or expired.
            self.drain_retired(&mut info)?;
            return Ok(info.to_semaphore(self.busy_count(tenant_id, key)?));
        }
        Err(LockError::Unavailable(format!(
            "semaphore `{key}` kept changing while it was being resized; try again"
        )))
    }

    fn get_semaphore(&self, tenant_id: &str, key: &str) -> Result<Option<Semaphore>> {
        match self.read_semaphore(tenant_id, key)? {
            Some(info) => Ok(Some(info.to_semaphore(self.busy_count(tenant_id, key)?))),
            None => Ok(None),
        }
    }

    fn delete_semaphore(&self, tenant_id: &str, key: &str) -> Result<bool> {
        let skey = Key::semaphore(tenant_id, key);
        let Some(info) = self.read_semaphore(tenant_id, key)? else {
            return Ok(false);
        };
        let conflict = |why: String| LockError::Conflict(format!("semaphore `{key}` {why}"));
        // Step 1: announce the deletion. The new version makes grants in flight re-check (and
        // undo themselves); `deleting` stops new ones.
        let marked = uuid::Uuid::new_v4().to_string();
        let params = Params::new()
            .s(":old_version", info.version.as_str())
            .s(":version", marked.as_str())
            .b(":true", true);
        // Invariant: a deletion starts from the version it read, so a resize is never undone.
        match self.update(
            &self.semaphore_table,
            &skey,
            "SET #version = :version, #deleting = :true",
            Some("#version = :old_version AND attribute_not_exists(#deleted)"),
            &params,
            ReturnValue::None,
        )? {
            Written::Done(_) => {}
            Written::Rejected(Some(item)) if SemaphoreInfo::from_item(&item)?.is_some() => {
                return Err(conflict(
                    "changed while it was being deleted; try again".into(),
                ));
            }
            Written::Rejected(_) => return Ok(false),
        }
        self.cache_semaphore(tenant_id, key, None);
        // Step 2: with no grant possible, count the permits that may be live.
        let mut live = 0;
        for (index, item) in self.slots(tenant_id, key)? {
            let slot = Key::mutex(tenant_id, Some(key), &slot_key(key, index));
            if self.watcher.may_be_live(&slot, &item) {
                live += 1;
            }
        }
        // Step 3: delete (a tombstone keeps slot_count, so the slots, which keep their fencing
        // tokens, are found again if the semaphore is re-created), or back off.
        let params = Params::new()
            .s(":marked", marked.as_str())
            .s(":version", uuid::Uuid::new_v4().to_string())
            .b(":true", true);
        let (update, outcome) = if live == 0 {
            (
                "SET #version = :version, #deleted = :true REMOVE #deleting, #retired",
                Ok(true),
            )
        } else {
            (
                "SET #version = :version REMOVE #deleting",
                Err(conflict(format!(
                    "has {live} permit(s) that may be live; release them, or retry once their \
                     leases have run out"
                ))),
            )
        };
        // Invariant: only the deletion that marked the semaphore finishes it.
        match self.update(
            &self.semaphore_table,
            &skey,
            update,
            Some("#version = :marked"),
            &params,
            ReturnValue::None,
        )? {
            Written::Done(_) => outcome,
            Written::Rejected(_) => Err(conflict(
                "changed while it was being deleted; try again".into(),
            )),
        }
    }

    fn semaphore_mutexes(&self, tenant_id: &str, key: &str) -> Result<Vec<MutexLock>> {
        let Some(info) = self.read_semaphore(tenant_id, key)? else {
            return Ok(Vec::new());
        };
        self.slots(tenant_id, key)?
            .into_iter()
            // Retired slots are listed while they are held.
            .filter(|(index, item)| *index < info.max_size || get_bool(item, LOCKED))
            .map(|(_, item)| to_mutex(&item))
            .collect()
    }

    fn list_mutexes(&self, tenant_id: &str) -> Result<Vec<MutexLock>> {
        self.query(
            &self.mutex_table,
            &mutex_partition(tenant_id, ""),
            Some("attribute_not_exists(#deleted)"),
        )?
        .iter()
        .map(to_mutex)
        .collect()
    }

    fn list_semaphores(&self, tenant_id: &str) -> Result<Vec<Semaphore>> {
        let items = self.query(
            &self.semaphore_table,
            tenant_id,
            Some("attribute_not_exists(#deleted)"),
        )?;
        let mut semaphores = Vec::with_capacity(items.len());
        for item in &items {
            if let Some(info) = SemaphoreInfo::from_item(item)? {
                let busy = self.busy_count(tenant_id, &info.semaphore_key)?;
                semaphores.push(info.to_semaphore(busy));
            }
        }
        Ok(semaphores)
    }
}
