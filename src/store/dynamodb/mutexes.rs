//! Records of the mutex table, plain mutexes and permit slots alike: grants (and a retry's
//! re-grant of its own), renewals, releases and tombstones; and the plain mutexes' reads,
//! deletes and listing.

use aws_sdk_dynamodb::types::ReturnValue;

use super::client::Written;
use super::item::{
    get_bool, get_s, mutex_partition, to_mutex, Item, Key, Params, DELETED, LOCKED, VERSION,
};
use super::watch::now_ms;
use super::DynamoDbStore;
use crate::error::{LockError, Result};
use crate::model::{millis, MutexLock};
use crate::store::{MutexRequest, ReleaseRequest, RenewRequest, Target};

impl DynamoDbStore {
    /// [`crate::store::LeaseStore::acquire_mutex`]: one `UpdateItem` (a retry that finds its
    /// own grant: a second one, to restart it).
    pub(super) fn grant_mutex(&self, req: &MutexRequest<'_>) -> Result<Option<MutexLock>> {
        let key = Key::mutex(req.tenant_id, None, req.key);
        let now = now_ms();
        let lease_ms = millis(req.lease);
        let mut params = Params::new()
            .s(":tenant", req.tenant_id)
            .s(":version", req.version)
            .s(":rvn", uuid::Uuid::new_v4().to_string())
            .n(":lease", lease_ms)
            .n(":expires", now.saturating_add(lease_ms))
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

    /// [`crate::store::LeaseStore::renew`] of a plain mutex or a permit slot: one `UpdateItem`.
    pub(super) fn renew_lease(&self, req: &RenewRequest<'_>) -> Result<Option<MutexLock>> {
        let key = Key::target(req.tenant_id, req.target);
        let now = now_ms();
        let mut params = Params::new()
            .s(":version", req.version)
            .s(":new_version", req.new_version)
            .s(":rvn", uuid::Uuid::new_v4().to_string())
            .n(":now", now)
            .b(":true", true);
        let mut update = "SET #version = :new_version, #rvn = :rvn, ".to_owned();
        match req.lease {
            Some(lease) => {
                let lease_ms = millis(lease);
                params = params
                    .n(":lease", lease_ms)
                    .n(":expires", now.saturating_add(lease_ms));
                update.push_str("#lease_duration_ms = :lease, #expires_at_ms = :expires");
            }
            // The lease the record has, counted from now: the same single write.
            None => update.push_str("#expires_at_ms = :now + #lease_duration_ms"),
        }
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
            Written::Done(item) => Ok(Some(to_mutex(&self.own_item(&key, item)?)?)),
            Written::Rejected(item) => {
                if let Some(item) = item {
                    self.watcher.observe(&key, &item);
                }
                Ok(None)
            }
        }
    }

    /// [`crate::store::LeaseStore::release`]: one `UpdateItem`, marking the record free or (a
    /// plain mutex with `req.delete`) turning it into a tombstone.
    pub(super) fn release_lease(&self, req: &ReleaseRequest<'_>) -> Result<bool> {
        let key = Key::target(req.tenant_id, req.target);
        // Permit slots stay: they carry the slot's fencing token and are part of the semaphore.
        let delete = req.delete && matches!(req.target, Target::Mutex(_));
        let in_doubt = req.in_doubt_version;
        if !delete {
            return self.mark_free(&key, req.version, in_doubt, req.data);
        }
        let params = Params::new()
            .s(":version", req.version)
            .s(":in_doubt", in_doubt.unwrap_or(req.version));
        let held = "#locked = :true AND #version IN (:version, :in_doubt)";
        // Invariant: only the current holder deletes on release (compare-and-set on the
        // version); the tombstone keeps the fencing token.
        Ok(matches!(
            self.tombstone(&key, held, params)?,
            Written::Done(_)
        ))
    }

    /// [`crate::store::AdminStore::get_mutex`]: one `GetItem`; tombstones are absent.
    pub(super) fn read_mutex(&self, tenant_id: &str, key: &str) -> Result<Option<MutexLock>> {
        let key = Key::mutex(tenant_id, None, key);
        match self.get(&self.mutex_table, &key)? {
            Some(item) if !get_bool(&item, DELETED) => {
                self.watcher.observe(&key, &item);
                Ok(Some(to_mutex(&item)?))
            }
            _ => Ok(None),
        }
    }

    /// [`crate::store::AdminStore::delete_mutex`]: one `UpdateItem` that leaves a tombstone.
    pub(super) fn remove_mutex(
        &self,
        tenant_id: &str,
        key: &str,
        version: Option<&str>,
    ) -> Result<bool> {
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

    /// [`crate::store::AdminStore::list_mutexes`]: one `Query` of the tenant's partition.
    pub(super) fn mutex_records(&self, tenant_id: &str) -> Result<Vec<MutexLock>> {
        self.query(
            &self.mutex_table,
            &mutex_partition(tenant_id, ""),
            Some("attribute_not_exists(#deleted)"),
        )?
        .iter()
        .map(to_mutex)
        .collect()
    }

    /// Writes a grant (`update` under `condition`) to the mutex table and reads the outcome:
    /// the granted record, or `None` when the item is held, which the watcher then notes for
    /// a later takeover. A rejection that shows the item held with our own version is our own
    /// grant, made by an earlier attempt whose reply was lost: it is re-granted in place.
    pub(super) fn write_grant(
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
            Written::Done(item) => Ok(Some(self.own_item(key, item)?)),
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

    /// The item a write of ours returned (asked for with `ReturnValue::AllNew`), noted by the
    /// watcher as our own.
    fn own_item(&self, key: &Key, item: Option<Item>) -> Result<Item> {
        let item = item
            .ok_or_else(|| LockError::Store("DynamoDB UpdateItem returned no attributes".into()))?;
        self.watcher.own_write(key, &item);
        Ok(item)
    }

    /// Restarts the lease of a grant held with `version`, keeping its fencing token: a retry
    /// that found its own earlier grant. `params` are the grant's (`:rvn`, `:lease`, `:expires`,
    /// and `:data` if it sets data). The new rvn restarts the watch of every waiter, whose
    /// observation of the earlier rvn began before our lease (counted from this retry) did.
    pub(super) fn regrant(
        &self,
        key: &Key,
        version: &str,
        params: &Params,
    ) -> Result<Option<Item>> {
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
            Written::Done(item) => Ok(Some(self.own_item(key, item)?)),
            Written::Rejected(_) => Ok(None),
        }
    }

    /// Marks a held record free. Returns whether it was held with `version` or `in_doubt`.
    pub(super) fn mark_free(
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
}
