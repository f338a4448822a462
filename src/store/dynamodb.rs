//! The DynamoDB store (being written).
