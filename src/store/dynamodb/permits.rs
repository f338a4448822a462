//! The permit protocol: granting a slot at a position below `max_size` (random probes, then a
//! read of all slots), a retry finding its own grant, checking a grant against a semaphore
//! that changed meanwhile, and settling the slots a shrink retired (freeing lapsed ones,
//! swapping live ones with free active ones in a transaction).

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::ReturnValue;
use rand::seq::SliceRandom;
use rand::Rng;

use super::client::Written;
use super::item::*;
use super::watch::now_ms;
use super::DynamoDbStore;
use crate::error::{LockError, Result};
use crate::model::{millis, MutexLock};
use crate::store::PermitRequest;

/// Random slots tried before a permit acquire reads all slots.
const PROBES: usize = 2;

/// Times a permit acquire starts over when the semaphore changes under it.
const PERMIT_ROUNDS: usize = 4;

impl DynamoDbStore {
    /// [`crate::store::LeaseStore::acquire_permit`] (see the module docs of the store for the
    /// protocol and its cost).
    pub(super) fn grant_permit(&self, req: &PermitRequest<'_>) -> Result<Option<MutexLock>> {
        let (tenant_id, key) = (req.tenant_id, req.semaphore);
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
            let lease_ms = req.lease.map_or(info.lease_ms, millis);
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
                        && (req.lease.is_some() || n.lease_ms == info.lease_ms))
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

    /// A retry's own permit: the slot held with `req.version` (an earlier attempt granted it,
    /// but its reply was lost), re-granted in place. Reads every slot: retries only.
    fn own_permit(
        &self,
        req: &PermitRequest<'_>,
        info: &SemaphoreInfo,
    ) -> Result<Option<MutexLock>> {
        let lease_ms = req.lease.map_or(info.lease_ms, millis);
        for (_, item) in self.slots(req.tenant_id, req.semaphore)? {
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

    /// Grants a slot at a position below `info.max_size`: a couple of random probes, then a
    /// read of all slots to find the free ones. Returns the slot's position with the record.
    fn grant_slot(
        &self,
        req: &PermitRequest<'_>,
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
            let slot = Key::slot(req.tenant_id, req.semaphore, number);
            if let Some(granted) = self.try_slot(req, info, &slot, lease_ms)? {
                return Ok(Some(granted));
            }
        }
        let mut candidates = Vec::new();
        for (position, item) in self.slots(req.tenant_id, req.semaphore)? {
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

    /// Tries to grant slot `slot` (an item key). `Ok(None)`: busy, missing, or not at a
    /// position below `max_size`. Returns the granted slot's position with the record.
    fn try_slot(
        &self,
        req: &PermitRequest<'_>,
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

    /// Settles the semaphore's `retired` positions (at or above `max_size`, possibly held):
    /// a slot there that is free, or whose holder's lease is provably over (then freed), leaves
    /// the set; a slot there that may still be live swaps positions with a free active slot, if
    /// there is one, so that it counts against `max_size` in that slot's place. Returns whether
    /// no retired position is still held, i.e. whether permits may be granted.
    /// Cost (only while a shrink drains): a `Query` of the slots, a write per slot settled.
    pub(super) fn drain_retired(&self, info: &mut SemaphoreInfo) -> Result<bool> {
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
}
