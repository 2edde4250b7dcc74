//! An in-memory Managed Flink for the paths moto does not implement (update, start, stop,
//! delete). It keeps the rules that matter to the reconciler — version ids on update, the
//! creation time on delete, no change while in a transitional state — and moves between states
//! only when the test calls [`FakeFlink::settle`], so nothing depends on timing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use clickheatmap_operator::Error;
use clickheatmap_operator::aws::flink::{
    BoxFuture, Change, FlinkApi, ObservedApplication, Timestamp,
};

#[derive(Default)]
struct State {
    apps: BTreeMap<String, ObservedApplication>,
    calls: Vec<String>,
    clock: i64,
}

#[derive(Default)]
pub struct FakeFlink {
    state: Mutex<State>,
}

fn busy(name: &str, message: &str) -> Error {
    Error::Busy {
        resource: format!("Flink application {name}"),
        message: message.to_owned(),
    }
}

impl FakeFlink {
    pub fn new() -> Arc<FakeFlink> {
        Arc::new(FakeFlink::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Finishes every transition: STARTING/UPDATING → RUNNING, STOPPING → READY, DELETING → gone.
    pub fn settle(&self) {
        let mut state = self.lock();
        state.apps.retain(|_, app| app.status != "DELETING");
        for app in state.apps.values_mut() {
            app.status = match app.status.as_str() {
                "STARTING" | "UPDATING" => "RUNNING".into(),
                "STOPPING" => "READY".into(),
                other => other.to_owned(),
            };
        }
    }

    /// The calls made so far, by operation name.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    pub fn app(&self, name: &str) -> Option<ObservedApplication> {
        self.lock().apps.get(name).cloned()
    }

    /// Puts an application in place (someone else's, or drifted).
    pub fn put(&self, app: ObservedApplication) {
        self.lock().apps.insert(app.name.clone(), app);
    }

    fn apply_now(&self, change: &Change) -> Result<(), Error> {
        let mut state = self.lock();
        let op = serde_json::to_value(change)
            .ok()
            .and_then(|v| v["op"].as_str().map(str::to_owned))
            .unwrap_or_default();
        state.calls.push(op);
        state.clock += 1;
        let clock = state.clock;
        match change {
            Change::CreateApplication {
                application,
                settings,
                tags,
            } => {
                if state.apps.contains_key(application) {
                    return Err(busy(application, "ResourceInUseException: exists"));
                }
                state.apps.insert(
                    application.clone(),
                    ObservedApplication {
                        name: application.clone(),
                        arn: format!(
                            "arn:aws:kinesisanalytics:ap-northeast-2:123456789012:application/{application}"
                        ),
                        status: "READY".into(),
                        version_id: 1,
                        create_timestamp: Some(Timestamp {
                            seconds: 1_700_000_000 + clock,
                            nanos: 250_000_000,
                        }),
                        settings: settings.clone(),
                        unmanaged: Vec::new(),
                        tags: tags.clone(),
                    },
                );
                Ok(())
            }
            Change::TagResource {
                application, tags, ..
            } => {
                let app = state
                    .apps
                    .get_mut(application)
                    .ok_or_else(|| Error::NotFound {
                        operation: "kinesisanalytics:TagResource".into(),
                        message: application.clone(),
                    })?;
                app.tags.extend(tags.clone());
                Ok(())
            }
            Change::UpdateApplication {
                application,
                current_version_id,
                settings,
                ..
            } => {
                let app = state
                    .apps
                    .get_mut(application)
                    .ok_or_else(|| Error::NotFound {
                        operation: "kinesisanalytics:UpdateApplication".into(),
                        message: application.clone(),
                    })?;
                if app.version_id != *current_version_id {
                    return Err(busy(
                        application,
                        "ConcurrentModificationException: version",
                    ));
                }
                if app.status != "READY" && app.status != "RUNNING" {
                    return Err(busy(application, "ResourceInUseException: transitional"));
                }
                // Like Managed Flink: what the update names is replaced, the rest (`unmanaged`)
                // stays.
                app.settings = settings.clone();
                app.version_id += 1;
                if app.status == "RUNNING" {
                    app.status = "UPDATING".into();
                }
                Ok(())
            }
            Change::StartApplication { application } => {
                let app = state
                    .apps
                    .get_mut(application)
                    .ok_or_else(|| busy(application, "missing"))?;
                if app.status != "READY" {
                    return Err(busy(application, "ResourceInUseException: not READY"));
                }
                app.status = "STARTING".into();
                Ok(())
            }
            Change::StopApplication { application } => {
                let app = state
                    .apps
                    .get_mut(application)
                    .ok_or_else(|| busy(application, "missing"))?;
                if app.status != "RUNNING" {
                    return Err(busy(application, "ResourceInUseException: not RUNNING"));
                }
                app.status = "STOPPING".into();
                Ok(())
            }
            Change::DeleteApplication {
                application,
                create_timestamp,
            } => {
                let app = state
                    .apps
                    .get_mut(application)
                    .ok_or_else(|| busy(application, "missing"))?;
                if app.create_timestamp != Some(*create_timestamp) {
                    return Err(Error::Rejected {
                        operation: "kinesisanalytics:DeleteApplication".into(),
                        code: "InvalidArgumentException".into(),
                        message: "CreateTimestamp does not match".into(),
                    });
                }
                app.status = "DELETING".into();
                Ok(())
            }
        }
    }
}

impl FlinkApi for FakeFlink {
    fn observe<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObservedApplication>, Error>> {
        let found = self.lock().apps.get(name).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn apply<'a>(&'a self, change: &'a Change) -> BoxFuture<'a, Result<(), Error>> {
        let result = self.apply_now(change);
        Box::pin(async move { result })
    }
}
