//! Semaphore records: creating and resizing them (new slots first, retired ones after a
//! shrink), reading them (through a small cache for permit grants), deleting them in steps,
//! and their slot items and busy counts.

use std::ops::Range;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

use super::client::Written;
use super::item::*;
use super::watch::{looks_live, now_ms};
use super::DynamoDbStore;
use crate::error::{LockError, Result};
use crate::model::{millis, MutexLock, Semaphore};

/// Slot items created at once when a semaphore grows.
const SLOT_WRITE_CONCURRENCY: usize = 16;

/// Semaphores remembered per store (version, size) between acquires.
const MAX_CACHED_SEMAPHORES: usize = 10_000;

impl DynamoDbStore {
    /// [`crate::store::AdminStore::put_semaphore`]: compare-and-set rounds of a read, the new
    /// slots and a write; then the retired slots are drained.
    pub(super) fn write_semaphore(&self, semaphore: &Semaphore) -> Result<Semaphore> {
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
                .n(":lease", millis(semaphore.lease_duration))
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

    /// [`crate::store::AdminStore::get_semaphore`]: a `GetItem` and a `Query` of the slots.
    pub(super) fn semaphore_record(&self, tenant_id: &str, key: &str) -> Result<Option<Semaphore>> {
        match self.read_semaphore(tenant_id, key)? {
            Some(info) => Ok(Some(info.to_semaphore(self.busy_count(tenant_id, key)?))),
            None => Ok(None),
        }
    }

    /// [`crate::store::AdminStore::delete_semaphore`]: read, mark, read the slots, finish.
    pub(super) fn remove_semaphore(&self, tenant_id: &str, key: &str) -> Result<bool> {
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
            let slot = Key::slot(tenant_id, key, index);
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

    /// [`crate::store::AdminStore::semaphore_mutexes`]: a `GetItem` and a `Query` of the slots.
    pub(super) fn slot_records(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> Result<Option<Vec<MutexLock>>> {
        let Some(info) = self.read_semaphore(tenant_id, key)? else {
            return Ok(None);
        };
        self.slots(tenant_id, key)?
            .into_iter()
            // Retired slots are listed while they are held.
            .filter(|(index, item)| *index < info.max_size || get_bool(item, LOCKED))
            .map(|(_, item)| to_mutex(&item))
            .collect::<Result<_>>()
            .map(Some)
    }

    /// [`crate::store::AdminStore::list_semaphores`]: a `Query`, and one per semaphore.
    pub(super) fn semaphore_records(&self, tenant_id: &str) -> Result<Vec<Semaphore>> {
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

    pub(super) fn cached_semaphore(&self, tenant_id: &str, key: &str) -> Option<SemaphoreInfo> {
        self.semaphores
            .lock()
            .get(&(tenant_id.to_owned(), key.to_owned()))
            .cloned()
    }

    pub(super) fn cache_semaphore(&self, tenant_id: &str, key: &str, info: Option<&SemaphoreInfo>) {
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
    pub(super) fn read_semaphore(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> Result<Option<SemaphoreInfo>> {
        let item = self.get(&self.semaphore_table, &Key::semaphore(tenant_id, key))?;
        let info = match item {
            Some(item) => SemaphoreInfo::from_item(&item)?,
            None => None,
        };
        self.cache_semaphore(tenant_id, key, info.as_ref());
        Ok(info)
    }

    pub(super) fn not_found(key: &str) -> LockError {
        LockError::NotFound(format!("semaphore `{key}` does not exist"))
    }

    /// The slot items of a semaphore, by slot index.
    pub(super) fn slots(&self, tenant_id: &str, key: &str) -> Result<Vec<(i64, Item)>> {
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
        let now = now_ms().to_string();
        // Invariant: creating a slot never overwrites one: an existing slot (perhaps held) keeps
        // its holder and its fencing token.
        let condition = "attribute_not_exists(#pk)";
        let names = Params::names_for(&[condition]);
        let requests: Vec<_> = range
            .map(|i| {
                let slot = Key::slot(tenant_id, key, i);
                let item = Item::from([
                    (PK.to_owned(), AttributeValue::S(slot.pk)),
                    (SK.to_owned(), AttributeValue::S(slot.sk)),
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
}
