//! Turning an output location from the configuration into an object store.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error(
        "{location}: S3 locations need the S3 sink, which this build does not include yet; \
         use a local directory"
    )]
    S3NotBuilt { location: String },
    #[error("{location}: unsupported location scheme; use a local directory")]
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
    pub fn open(location: &str) -> Result<Location, LocationError> {
        if location.starts_with("s3://") || location.starts_with("s3a://") {
            return Err(LocationError::S3NotBuilt {
                location: location.to_owned(),
            });
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

    /// A path below this location's prefix.
    pub fn child(&self, name: &str) -> Path {
        self.prefix.clone().join(name)
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
        let err = Location::open("s3://bucket/curated/").unwrap_err();
        assert!(err.to_string().contains("S3"), "{err}");
        assert!(matches!(
            Location::open("gs://bucket/x"),
            Err(LocationError::UnsupportedScheme { .. })
        ));
    }
}
