//! Shard leases: replicas split a stream's shards among themselves through objects in the
//! checkpoint store, written with conditional requests (S3 `If-None-Match` / `If-Match`), so
//! that no cluster API is needed and exactly one replica reads a shard.
//!
//! Under `<checkpoints>/<stream>/_leases/`:
//!
//! * `members/<replica>.json` — each replica's heartbeat (`expiresAtMs`), rewritten every tick;
//! * `shards/<shard>.json` — `{"holder": <replica>, "expiresAtMs": ...}`, changed only by a
//!   compare-and-swap on the object's ETag.
//!
//! Every tick a replica counts the live members, aims at an even share of the shards
//! (`ceil(shards / members)`), renews the leases it holds, takes free or expired ones up to its
//! share, and gives back what it holds beyond it — after the shard's reader has stopped and
//! checkpointed, so the next holder resumes exactly there. A replica that dies stops renewing;
//! its leases expire and the others take them. A replica that cannot renew stops its readers
//! before its leases can expire ([`ShardLeases::fence`]), so two replicas never read a shard at
//! once while their clocks agree to within a fraction of the lease duration.
//!
//! [`plan`] is the whole decision, as a pure function.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::consumer::stable_shard_hash;
use crate::location::Location;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease store: {0}")]
    Store(#[from] object_store::Error),
    #[error("lease object {path} is not valid JSON: {source}")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A shard lease or a member heartbeat, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    pub holder: String,
    pub expires_at_ms: i64,
}

/// What one tick should do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Held, and still wanted: renew.
    pub renew: Vec<String>,
    /// Free or expired: try to take.
    pub acquire: Vec<String>,
    /// Held beyond this replica's share: stop reading, then give back.
    pub release: Vec<String>,
}

/// The decision of one tick for replica `me` at `now_ms`.
///
/// `shards` are the shards that can be read now (open, or closed but not yet finished, with their
/// parents finished); `leases` what the store says about them; `members` the other replicas whose
/// heartbeat has not expired. The share is `ceil(shards / (members + 1))`: held leases beyond it
/// are released, and free or expired leases taken up to it, in an order that differs per replica
/// so that replicas starting together do not all race for the same shard.
pub fn plan(
    me: &str,
    now_ms: i64,
    shards: &[String],
    leases: &BTreeMap<String, LeaseRecord>,
    members: &BTreeSet<String>,
) -> Plan {
    let replicas = members.iter().filter(|member| *member != me).count() + 1;
    let share = shards.len().div_ceil(replicas);
    let my_hash = stable_shard_hash(me);
    let order = |shard: &String| stable_shard_hash(shard) ^ my_hash;

    // An expired lease is free, even one of this replica's own (a shard it gave back): its
    // reader stopped before the lease could expire.
    let mut held: Vec<&String> = shards
        .iter()
        .filter(|shard| {
            leases
                .get(*shard)
                .is_some_and(|lease| lease.holder == me && lease.expires_at_ms > now_ms)
        })
        .collect();
    held.sort_by_key(|shard| order(shard));
    let mut free: Vec<&String> = shards
        .iter()
        .filter(|shard| {
            leases
                .get(*shard)
                .is_none_or(|lease| lease.expires_at_ms <= now_ms)
        })
        .collect();
    free.sort_by_key(|shard| order(shard));

    let keep = held.len().min(share);
    Plan {
        renew: held[..keep].iter().map(|s| (*s).clone()).collect(),
        release: held[keep..].iter().map(|s| (*s).clone()).collect(),
        acquire: free
            .into_iter()
            .take(share - keep)
            .map(|s| (*s).clone())
            .collect(),
    }
}

/// The leases of one replica.
pub struct ShardLeases {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    me: String,
    duration_ms: i64,
    /// Held shards and when their lease was last written.
    held: BTreeMap<String, i64>,
}

/// The outcome of a tick: the shards this replica may read, and those to stop and give back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    pub owned: BTreeSet<String>,
    pub release: Vec<String>,
}

impl ShardLeases {
    /// Leases below `location` (the stream's checkpoint folder) for replica `me`.
    pub fn new(location: &Location, me: &str, duration_ms: i64) -> ShardLeases {
        ShardLeases {
            store: location.store.clone(),
            prefix: location.child("_leases"),
            me: me.to_owned(),
            duration_ms,
            held: BTreeMap::new(),
        }
    }

    pub fn holder(&self) -> &str {
        &self.me
    }

    fn shard_path(&self, shard: &str) -> Path {
        self.prefix
            .clone()
            .join("shards")
            .join(format!("{shard}.json").as_str())
    }

    fn member_path(&self, member: &str) -> Path {
        self.prefix
            .clone()
            .join("members")
            .join(format!("{member}.json").as_str())
    }

    async fn read(&self, path: &Path) -> Result<Option<(LeaseRecord, UpdateVersion)>, LeaseError> {
        let result = match self.store.get(path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let version = UpdateVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        let bytes = result.bytes().await?;
        let record = serde_json::from_slice(&bytes).map_err(|source| LeaseError::Decode {
            path: path.to_string(),
            source,
        })?;
        Ok(Some((record, version)))
    }

    /// Writes `record` if the object is still `expected` (`None`: still absent). `false` when
    /// another replica changed it first.
    async fn swap(
        &self,
        path: &Path,
        record: &LeaseRecord,
        expected: Option<UpdateVersion>,
    ) -> Result<bool, LeaseError> {
        let mode = match expected {
            Some(version) => PutMode::Update(version),
            None => PutMode::Create,
        };
        let body = serde_json::to_vec(record).unwrap_or_default();
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self.store.put_opts(path, body.into(), options).await {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// The other live members, after writing this replica's heartbeat.
    async fn members(&self, now_ms: i64) -> Result<BTreeSet<String>, LeaseError> {
        let heartbeat = LeaseRecord {
            holder: self.me.clone(),
            expires_at_ms: now_ms + self.duration_ms,
        };
        let body = serde_json::to_vec(&heartbeat).unwrap_or_default();
        self.store
            .put(&self.member_path(&self.me), body.into())
            .await?;
        let listed: Vec<_> = self
            .store
            .list(Some(&self.prefix.clone().join("members")))
            .try_collect()
            .await?;
        let mut members = BTreeSet::new();
        for meta in listed {
            if let Some((record, _)) = self.read(&meta.location).await?
                && record.expires_at_ms > now_ms
            {
                members.insert(record.holder);
            }
        }
        Ok(members)
    }

    /// One round: heartbeat, read the leases of `shards`, renew, take and give back.
    pub async fn tick(&mut self, shards: &[String], now_ms: i64) -> Result<Assignment, LeaseError> {
        let members = self.members(now_ms).await?;
        let mut leases = BTreeMap::new();
        let mut versions = BTreeMap::new();
        for shard in shards {
            if let Some((record, version)) = self.read(&self.shard_path(shard)).await? {
                leases.insert(shard.clone(), record);
                versions.insert(shard.clone(), version);
            }
        }
        let plan = plan(&self.me, now_ms, shards, &leases, &members);
        let mine = LeaseRecord {
            holder: self.me.clone(),
            expires_at_ms: now_ms + self.duration_ms,
        };
        // A shard being given back stays held (and renewed) until its reader has stopped.
        for shard in plan.renew.iter().chain(&plan.release).chain(&plan.acquire) {
            let path = self.shard_path(shard);
            if self.swap(&path, &mine, versions.remove(shard)).await? {
                if !self.held.contains_key(shard) {
                    tracing::info!(shard = %shard, holder = %self.me, "lease taken");
                }
                self.held.insert(shard.clone(), now_ms);
            } else if self.held.remove(shard).is_some() {
                tracing::warn!(shard = %shard, holder = %self.me, "lease lost to another replica");
            }
        }
        // Leases of shards no longer listed (finished) are simply not renewed.
        self.held.retain(|shard, _| shards.contains(shard));
        let release = plan
            .release
            .into_iter()
            .filter(|shard| self.held.contains_key(shard))
            .collect();
        Ok(Assignment {
            owned: self.held.keys().cloned().collect(),
            release,
        })
    }

    /// Held shards whose lease could expire before the next tick renews it (the store has not
    /// answered for a while): their readers must stop now. They are no longer held.
    pub fn fence(&mut self, now_ms: i64, tick_ms: i64) -> Vec<String> {
        // Stop while a full tick is still left before the lease can expire.
        let margin = self.duration_ms - tick_ms;
        let fenced: Vec<String> = self
            .held
            .iter()
            .filter(|(_, written)| now_ms - **written >= margin)
            .map(|(shard, _)| shard.clone())
            .collect();
        for shard in &fenced {
            self.held.remove(shard);
        }
        fenced
    }

    /// Gives a shard back once its reader has stopped and checkpointed.
    pub async fn release(&mut self, shard: &str) -> Result<(), LeaseError> {
        self.held.remove(shard);
        let path = self.shard_path(shard);
        if let Some((record, version)) = self.read(&path).await?
            && record.holder == self.me
        {
            let expired = LeaseRecord {
                holder: self.me.clone(),
                expires_at_ms: 0,
            };
            if self.swap(&path, &expired, Some(version)).await? {
                tracing::info!(shard, holder = %self.me, "lease given back");
            }
        }
        Ok(())
    }

    /// At shutdown: every held lease given back, the heartbeat removed.
    pub async fn resign(&mut self) -> Result<(), LeaseError> {
        let held: Vec<String> = self.held.keys().cloned().collect();
        for shard in held {
            self.release(&shard).await?;
        }
        match self.store.delete(&self.member_path(&self.me)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("shardId-{i:012}")).collect()
    }

    fn lease(holder: &str, expires: i64) -> LeaseRecord {
        LeaseRecord {
            holder: holder.to_owned(),
            expires_at_ms: expires,
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[tokio::test]
    async fn held_leases_are_fenced_a_tick_before_they_could_expire() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::open(dir.path().to_str().unwrap()).unwrap();
        let mut leases = ShardLeases::new(&location, "a", 3_000);
        leases.held.insert("s1".to_owned(), 10_000);
        leases.held.insert("s2".to_owned(), 11_000);
        assert!(leases.fence(11_999, 1_000).is_empty());
        assert_eq!(leases.fence(12_000, 1_000), vec!["s1".to_owned()]);
        assert_eq!(leases.fence(13_500, 1_000), vec!["s2".to_owned()]);
        assert!(leases.held.is_empty());
    }

    #[test]
    fn a_lone_replica_takes_every_shard() {
        let plan = plan("a", 100, &shards(4), &BTreeMap::new(), &set(&["a"]));
        assert_eq!(plan.acquire.len(), 4);
        assert!(plan.renew.is_empty() && plan.release.is_empty());
    }

    #[test]
    fn a_new_replica_gets_half_and_the_old_one_gives_half_back() {
        let all = shards(4);
        let leases: BTreeMap<String, LeaseRecord> =
            all.iter().map(|s| (s.clone(), lease("a", 1_000))).collect();
        let members = set(&["a", "b"]);
        let old = plan("a", 100, &all, &leases, &members);
        assert_eq!((old.renew.len(), old.release.len()), (2, 2));
        assert!(old.acquire.is_empty());
        // Until "a" gives them back, "b" finds nothing free: never two readers.
        let new = plan("b", 100, &all, &leases, &members);
        assert_eq!(new, Plan::default());
        // Given back (expired), "b" takes exactly those.
        let mut leases = leases;
        for shard in &old.release {
            leases.insert(shard.clone(), lease("a", 0));
        }
        let new = plan("b", 100, &all, &leases, &members);
        assert_eq!(set_of(&new.acquire), set_of(&old.release));
    }

    fn set_of(items: &[String]) -> BTreeSet<String> {
        items.iter().cloned().collect()
    }

    #[test]
    fn a_dead_replicas_shards_are_taken_once_its_leases_expire() {
        let all = shards(4);
        let mut leases = BTreeMap::new();
        for (i, shard) in all.iter().enumerate() {
            let (holder, expires) = if i < 2 { ("a", 2_000) } else { ("b", 1_000) };
            leases.insert(shard.clone(), lease(holder, expires));
        }
        // "b" died: its heartbeat is gone but its leases still run.
        let before = plan("a", 500, &all, &leases, &set(&["a"]));
        assert_eq!(before.renew.len(), 2);
        assert!(before.acquire.is_empty(), "{before:?}");
        let after = plan("a", 1_000, &all, &leases, &set(&["a"]));
        assert_eq!(after.renew.len(), 2);
        assert_eq!(after.acquire.len(), 2);
    }

    #[test]
    fn shares_are_even_and_every_shard_is_read_once_whatever_the_counts() {
        for shard_count in 1..=9 {
            for replica_count in 1..=5 {
                let all = shards(shard_count);
                let names: Vec<String> = (0..replica_count).map(|i| format!("r{i}")).collect();
                let members: BTreeSet<String> = names.iter().cloned().collect();
                let mut leases: BTreeMap<String, LeaseRecord> = BTreeMap::new();
                // Ticks in turn until nothing changes; each applies its plan like the store would.
                for _round in 0..10 {
                    for me in &names {
                        let plan = plan(me, 100, &all, &leases, &members);
                        for shard in &plan.release {
                            leases.insert(shard.clone(), lease(me, 0));
                        }
                        for shard in plan.renew.iter().chain(&plan.acquire) {
                            leases.insert(shard.clone(), lease(me, 1_000));
                        }
                    }
                }
                let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                for shard in &all {
                    let record = &leases[shard];
                    assert!(record.expires_at_ms > 100, "{shard} unread: {leases:?}");
                    *counts.entry(record.holder.as_str()).or_insert(0) += 1;
                }
                let share = shard_count.div_ceil(replica_count);
                assert!(
                    counts.values().all(|count| *count <= share),
                    "{shard_count} shards, {replica_count} replicas: {counts:?}"
                );
            }
        }
    }

    #[test]
    fn a_lease_given_back_is_not_taken_again_by_the_one_that_gave_it() {
        let all = shards(4);
        let leases: BTreeMap<String, LeaseRecord> =
            all.iter().map(|s| (s.clone(), lease("a", 1_000))).collect();
        let members = set(&["a", "b"]);
        let first = plan("a", 100, &all, &leases, &members);
        let mut leases = leases;
        leases.insert(first.release[0].clone(), lease("a", 0));
        let next = plan("a", 100, &all, &leases, &members);
        // Still over its share by one (the other shard being given back): the same one again.
        assert_eq!(next.release, first.release[1..].to_vec());
        assert!(next.acquire.is_empty(), "{next:?}");
        assert_eq!(set_of(&next.renew), set_of(&first.renew));
    }

    #[test]
    fn a_lease_of_another_live_replica_is_never_taken() {
        let all = shards(2);
        let leases: BTreeMap<String, LeaseRecord> =
            all.iter().map(|s| (s.clone(), lease("b", 1_000))).collect();
        // "a" thinks it is alone (b's heartbeat is late) — still only expired leases are taken.
        let plan = plan("a", 999, &all, &leases, &set(&["a"]));
        assert!(plan.acquire.is_empty(), "{plan:?}");
    }
}
