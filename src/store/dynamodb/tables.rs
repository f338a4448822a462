//! The schema: both tables have a string partition key `pk`, a string sort key `sk` and
//! on-demand billing. Migrating creates a missing table and waits until it is active.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};

use super::item::{PK, SK};
use super::DynamoDbStore;
use crate::error::{LockError, Result};

/// Longest wait for a new table to become active.
const TABLE_WAIT: Duration = Duration::from_secs(300);

impl DynamoDbStore {
    /// Creates `table` if it is missing, and waits until it is active.
    pub(super) fn ensure_table(&self, table: &str) -> Result<()> {
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
}
