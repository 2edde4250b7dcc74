//! Turning an output location from the configuration into an object store.

use std::sync::Arc;

use clickheatmap_crds::AggregatorConfig;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error("{location}: an S3 location needs a bucket, like s3://bucket/prefix/")]
    NoBucket { location: String },
    #[error(
        "{location}: unsupported location scheme; use s3://bucket/prefix/ or a local directory"
    )]
    UnsupportedScheme { location: String },
    #[error("creating the output directory {location}: {source}")]
    CreateDirectory {
        location: String,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the output directory {location}: {source}")]
    Open {
        location: String,
        #[source]
        source: object_store::Error,
    },
}

/// An object store and the path inside it that a location names.
#[derive(Clone, Debug)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
}

impl Location {
    /// Opens `s3://bucket/prefix/`, `file:///dir` or a plain directory path (created if missing).
    ///
    /// S3 uses the standard AWS environment: credentials (keys, IRSA web identity, container
    /// credentials), `AWS_REGION`, and `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` for an emulator.
    pub fn open(location: &str) -> Result<Location, LocationError> {
        if let Some(rest) = location
            .strip_prefix("s3://")
            .or_else(|| location.strip_prefix("s3a://"))
        {
            return Location::open_s3(location, rest);
        }
        let directory = match location.split_once("://") {
            Some(("file", path)) => path,
            Some(_) => {
                return Err(LocationError::UnsupportedScheme {
                    location: location.to_owned(),
                });
            }
            None => location,
        };
        std::fs::create_dir_all(directory).map_err(|source| LocationError::CreateDirectory {
            location: location.to_owned(),
            source,
        })?;
        let store =
            LocalFileSystem::new_with_prefix(directory).map_err(|source| LocationError::Open {
                location: location.to_owned(),
                source,
            })?;
        Ok(Location {
            store: Arc::new(store),
            prefix: Path::default(),
        })
    }

    fn open_s3(location: &str, rest: &str) -> Result<Location, LocationError> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(LocationError::NoBucket {
                location: location.to_owned(),
            });
        }
        // Conditional writes (If-Match) for shard leases; S3 has them natively.
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
        // A plain-HTTP endpoint is an emulator or an on-premises S3; allow what was asked for.
        let plain_http = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|name| std::env::var(name).ok())
            .is_some_and(|endpoint| endpoint.starts_with("http://"));
        if plain_http {
            builder = builder.with_allow_http(true);
        }
        let store = builder.build().map_err(|source| LocationError::Open {
            location: location.to_owned(),
            source,
        })?;
        Ok(Location {
            store: Arc::new(store),
            prefix: Path::from(prefix.trim_matches('/')),
        })
    }

    /// A path below this location's prefix.
    pub fn child(&self, name: &str) -> Path {
        self.prefix.clone().join(name)
    }

    /// A location below this one.
    pub fn below(&self, name: &str) -> Location {
        Location {
            store: self.store.clone(),
            prefix: self.child(name),
        }
    }

    /// Where rejected records of `config` go: `output.deadLetter`, by default `dead_letter/`
    /// beside the table; `None` when the empty string turned them off.
    pub fn dead_letters(
        config: &AggregatorConfig,
        output: &Location,
    ) -> Result<Option<Location>, LocationError> {
        match config.output.dead_letter.as_deref() {
            Some("") => Ok(None),
            Some(location) => Location::open(location).map(Some),
            None => Ok(Some(output.below("dead_letter"))),
        }
    }

    /// Where checkpoints of `config` go: `checkpoint.location`, by default `_checkpoints/` beside
    /// the table — never inside it, where a Glue crawler would see them.
    pub fn checkpoints(
        config: &AggregatorConfig,
        output: &Location,
    ) -> Result<Location, LocationError> {
        match &config.checkpoint.location {
            Some(location) => Location::open(location),
            None => Ok(output.below("_checkpoints")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_directories_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b");
        let location = Location::open(target.to_str().unwrap()).unwrap();
        assert!(target.is_dir());
        assert_eq!(
            location.child("curated_heatmap").as_ref(),
            "curated_heatmap"
        );
        let url = format!("file://{}", dir.path().join("c").display());
        assert!(Location::open(&url).is_ok());
    }

    #[test]
    fn unsupported_locations_say_why() {
        let location = Location::open("s3://bucket/curated/").unwrap();
        assert_eq!(location.child("t").as_ref(), "curated/t");
        assert!(matches!(
            Location::open("s3:///x"),
            Err(LocationError::NoBucket { .. })
        ));
        assert!(matches!(
            Location::open("gs://bucket/x"),
            Err(LocationError::UnsupportedScheme { .. })
        ));
    }
}
