//! Per-shard checkpoints, and the two-phase commit that makes output exactly-once in effect.
//!
//! A shard's flush goes: (1) record the files it is about to write in an *intent*
//! (`<shard>.intent.json`, tagged with the next epoch); (2) write the files; (3) write the
//! checkpoint (`<shard>.json`) with that epoch, the last sequence number applied and the window
//! state. After a crash, a restart loads the checkpoint; an intent with a newer epoch belongs to a
//! flush that never committed, so its files are deleted before reading resumes right after the
//! checkpointed sequence number, with the checkpointed windows. Whatever the moment of the crash,
//! every click is then counted in exactly one committed file.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::location::Location;
use crate::sink::FlushPlan;
use crate::window::WindowsSnapshot;

pub const CHECKPOINT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("reading checkpoint {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("writing checkpoint {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("checkpoint {path} is not valid: {source}")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "checkpoint {path} has version {found}; this aggregator reads version {CHECKPOINT_VERSION}"
    )]
    Version { path: String, found: u32 },
}

/// The committed state of one shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardCheckpoint {
    pub version: u32,
    pub stream: String,
    pub shard_id: String,
    /// Increases with every commit.
    pub epoch: u64,
    /// The last sequence number whose clicks are in `windows` or in committed files.
    pub sequence_number: Option<String>,
    /// The shard was closed by resharding and everything in it has been written.
    pub shard_finished: bool,
    /// The sink's next flush number.
    pub flush_sequence: u64,
    pub windows: WindowsSnapshot,
}

/// The files a flush is about to write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlushIntent {
    pub epoch: u64,
    pub plan: FlushPlan,
}

/// Where the checkpoints of one stream live.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl CheckpointStore {
    /// Checkpoints of `stream` below `location` (one folder per stream).
    pub fn new(location: Location, stream: &str) -> Self {
        CheckpointStore {
            prefix: location.child(stream),
            store: location.store,
        }
    }

    /// The folder of the stream's checkpoints.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    fn path(&self, shard_id: &str, suffix: &str) -> Path {
        self.prefix
            .clone()
            .join(format!("{shard_id}{suffix}").as_str())
    }

    pub async fn load(&self, shard_id: &str) -> Result<Option<ShardCheckpoint>, CheckpointError> {
        let path = self.path(shard_id, ".json");
        let Some(checkpoint): Option<ShardCheckpoint> = self.read(&path).await? else {
            return Ok(None);
        };
        if checkpoint.version != CHECKPOINT_VERSION {
            return Err(CheckpointError::Version {
                path: path.to_string(),
                found: checkpoint.version,
            });
        }
        Ok(Some(checkpoint))
    }

    pub async fn load_intent(
        &self,
        shard_id: &str,
    ) -> Result<Option<FlushIntent>, CheckpointError> {
        self.read(&self.path(shard_id, ".intent.json")).await
    }

    pub async fn save(&self, checkpoint: &ShardCheckpoint) -> Result<(), CheckpointError> {
        self.write(&self.path(&checkpoint.shard_id, ".json"), checkpoint)
            .await
    }

    pub async fn save_intent(
        &self,
        shard_id: &str,
        intent: &FlushIntent,
    ) -> Result<(), CheckpointError> {
        self.write(&self.path(shard_id, ".intent.json"), intent)
            .await
    }

    async fn read<T: for<'de> Deserialize<'de>>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, CheckpointError> {
        let bytes = match self.store.get(path).await {
            Ok(result) => result.bytes().await,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => Err(source),
        }
        .map_err(|source| CheckpointError::Read {
            path: path.to_string(),
            source,
        })?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CheckpointError::Decode {
                path: path.to_string(),
                source,
            })
    }

    async fn write<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), CheckpointError> {
        let json = serde_json::to_vec(value).map_err(|source| CheckpointError::Decode {
            path: path.to_string(),
            source,
        })?;
        self.store
            .put(path, PutPayload::from(Bytes::from(json)))
            .await
            .map(|_| ())
            .map_err(|source| CheckpointError::Write {
                path: path.to_string(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checkpoints_and_intents_round_trip() {
        let location = Location {
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: Path::from("checkpoints"),
        };
        let store = CheckpointStore::new(location, "clicks");
        assert_eq!(store.load("shardId-0").await.unwrap(), None);
        let checkpoint = ShardCheckpoint {
            version: CHECKPOINT_VERSION,
            stream: "clicks".into(),
            shard_id: "shardId-0".into(),
            epoch: 3,
            sequence_number: Some("4960".into()),
            shard_finished: false,
            flush_sequence: 2,
            windows: WindowsSnapshot::default(),
        };
        store.save(&checkpoint).await.unwrap();
        assert_eq!(
            store.load("shardId-0").await.unwrap(),
            Some(checkpoint.clone())
        );
        let intent = FlushIntent {
            epoch: 4,
            plan: FlushPlan {
                curated: vec!["t/a.parquet".into()],
                dead_letter: None,
            },
        };
        store.save_intent("shardId-0", &intent).await.unwrap();
        assert_eq!(store.load_intent("shardId-0").await.unwrap(), Some(intent));

        let future = ShardCheckpoint {
            version: 99,
            ..checkpoint
        };
        store.save(&future).await.unwrap();
        assert!(matches!(
            store.load("shardId-0").await,
            Err(CheckpointError::Version { found: 99, .. })
        ));
    }
}
