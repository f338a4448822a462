//! The client side of the store: its tokio runtime and SDK client with their timeouts, how SDK
//! errors are classified, and the single requests (`UpdateItem`, `GetItem`, `Query`) that the
//! rest is built from.

use std::future::Future;

use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;
use parking_lot::Mutex;

use super::item::{Item, Key, Params};
use super::watch::{Takeover, Watcher};
use super::DynamoDbStore;
use crate::config::LocksConfig;
use crate::error::{LockError, Redactor, Result};
use crate::model::millis;
use crate::store::AdminStore;

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
pub(super) enum Written {
    /// Written; the item as `ReturnValues` asked.
    Done(Option<Item>),
    /// The condition was false; the item as it is (`None`: there is none).
    Rejected(Option<Item>),
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
            .connect_timeout(config.connect_timeout)
            .operation_timeout(config.io_timeout)
            .operation_attempt_timeout(config.io_timeout)
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
                .dynamodb_trust_expiry_with_skew
                .map(|skew| millis(skew).min(i64::MAX / 2)),
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
    pub(super) fn run<F: Future>(&self, fut: F) -> Result<F::Output> {
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
    pub(super) fn sdk_error<E>(&self, table: &str, op: &str, err: SdkError<E>) -> LockError
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

    /// One `UpdateItem`: `update` if `condition` holds. A rejected write returns the item as it
    /// is (`ReturnValuesOnConditionCheckFailure = ALL_OLD`), at no extra cost.
    pub(super) fn update(
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
    pub(super) fn get(&self, table: &str, key: &Key) -> Result<Option<Item>> {
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
    pub(super) fn query(&self, table: &str, pk: &str, filter: Option<&str>) -> Result<Vec<Item>> {
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
}
