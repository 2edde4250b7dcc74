//! The Athena workgroup the heatmap is queried through.
//!
//! Results go to `s3://<query results bucket>/<results prefix>`, the workgroup's settings are
//! enforced over client-side settings (so every query of the viewer lands in the bucket whose
//! lifecycle rule expires results), and an optional per-query scan limit caps the cost of a bad
//! query. The workgroup must be `ENABLED`.
//!
//! Athena answers `GetWorkGroup` for a missing workgroup with `InvalidRequestException` ("…is
//! not found"), not with a not-found code; [`observe`] treats that as "does not exist".

use std::collections::BTreeMap;
use std::fmt;

use aws_sdk_athena::Client;
use aws_sdk_athena::types::{
    EncryptionConfiguration, EncryptionOption, ResultConfiguration, ResultConfigurationUpdates,
    Tag, WorkGroupConfiguration, WorkGroupConfigurationUpdates, WorkGroupState,
};
use clickheatmap_crds::{ClickHeatmapPipelineSpec, PipelineResources, ResultsEncryption};
use serde::Serialize;

use super::{
    AwsClients, Deletion, PartReconciler, PlanInput, Readiness, SdkResultExt, Service, check_owner,
    left_in_place, tag_change,
};
use crate::error::{Error, code_of, from_sdk, is_not_found};
use crate::names::{Names, Owner, query_results_location};
use crate::pipeline::{DeleteStep, Part};

/// The workgroup's settings, as far as the operator manages them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkgroupSettings {
    pub output_location: String,
    pub enforce_configuration: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_scanned_cutoff_per_query: Option<i64>,
    /// How results are encrypted: `SSE_S3` or `SSE_KMS` (with the key).
    pub results_encryption: ResultsEncryptionSetting,
}

/// Athena's result encryption, as the operator sets and reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultsEncryptionSetting {
    /// `SSE_S3`, `SSE_KMS` or `CSE_KMS`.
    pub option: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<String>,
}

impl ResultsEncryptionSetting {
    /// KMS (server- or client-side) is stronger than SSE-S3: the user holds the key.
    fn uses_kms(&self) -> bool {
        self.option.ends_with("_KMS")
    }

    fn to_sdk(&self) -> Result<EncryptionConfiguration, Error> {
        EncryptionConfiguration::builder()
            .encryption_option(EncryptionOption::from(self.option.as_str()))
            .set_kms_key(self.kms_key.clone())
            .build()
            .map_err(|e| Error::internal(format!("an Athena encryption configuration: {e}")))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredWorkgroup {
    pub name: String,
    pub arn: String,
    pub description: String,
    pub settings: WorkgroupSettings,
    pub owner: Owner,
    pub adopt_existing: bool,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedWorkgroup {
    pub name: String,
    /// `ENABLED` or `DISABLED`.
    pub state: String,
    pub output_location: Option<String>,
    pub enforce_configuration: Option<bool>,
    pub bytes_scanned_cutoff_per_query: Option<i64>,
    /// `None` when results are not encrypted.
    pub results_encryption: Option<ResultsEncryptionSetting>,
    pub tags: BTreeMap<String, String>,
}

/// One Athena call the operator would make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all_fields = "camelCase")]
pub enum Change {
    CreateWorkGroup {
        workgroup: String,
        description: String,
        settings: WorkgroupSettings,
        tags: BTreeMap<String, String>,
    },
    TagResource {
        workgroup: String,
        resource_arn: String,
        tags: BTreeMap<String, String>,
    },
    UpdateWorkGroup {
        workgroup: String,
        settings: WorkgroupSettings,
        /// Set the workgroup `ENABLED` again.
        enable: bool,
    },
}

fn describe(settings: &WorkgroupSettings) -> String {
    let mut text = format!("results to {}", settings.output_location);
    if settings.enforce_configuration {
        text.push_str(", enforced");
    }
    match settings.bytes_scanned_cutoff_per_query {
        Some(limit) => text.push_str(&format!(", at most {limit} bytes scanned per query")),
        None => text.push_str(", no scan limit"),
    }
    let encryption = &settings.results_encryption;
    text.push_str(&format!(", results encrypted with {}", encryption.option));
    if let Some(key) = &encryption.kms_key {
        text.push_str(&format!(" key {key}"));
    }
    text
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreateWorkGroup {
                workgroup,
                settings,
                tags,
                ..
            } => write!(
                f,
                "create Athena workgroup {workgroup} ({}), tagged {}",
                describe(settings),
                super::show_tags(tags)
            ),
            Change::TagResource {
                workgroup, tags, ..
            } => write!(
                f,
                "tag Athena workgroup {workgroup} with {}",
                super::show_tags(tags)
            ),
            Change::UpdateWorkGroup {
                workgroup,
                settings,
                enable,
            } => {
                write!(
                    f,
                    "update Athena workgroup {workgroup} ({})",
                    describe(settings)
                )?;
                if *enable {
                    f.write_str(" and enable it")?;
                }
                Ok(())
            }
        }
    }
}

/// The workgroup the spec asks for.
pub fn desired(spec: &ClickHeatmapPipelineSpec, names: &Names) -> DesiredWorkgroup {
    let name = spec.query.workgroup.clone();
    DesiredWorkgroup {
        arn: names.workgroup_arn(&name),
        name,
        description: format!(
            "Click heatmaps of pipeline {} (managed by clickheatmap-operator)",
            names.owner.tag_value()
        ),
        settings: WorkgroupSettings {
            output_location: query_results_location(spec),
            enforce_configuration: true,
            bytes_scanned_cutoff_per_query: spec.query.bytes_scanned_cutoff_per_query,
            results_encryption: match spec.query.results_encryption {
                ResultsEncryption::SseS3 => ResultsEncryptionSetting {
                    option: "SSE_S3".to_owned(),
                    kms_key: None,
                },
                ResultsEncryption::SseKms => ResultsEncryptionSetting {
                    option: "SSE_KMS".to_owned(),
                    kms_key: spec.query.results_kms_key_id.clone(),
                },
            },
        },
        owner: names.owner.clone(),
        adopt_existing: spec.adopt_existing,
        tags: crate::names::resource_tags(spec, &names.owner),
    }
}

/// Reads the workgroup and its tags; `None` when there is no such workgroup.
pub async fn observe(
    client: &Client,
    desired: &DesiredWorkgroup,
) -> Result<Option<ObservedWorkgroup>, Error> {
    let name = &desired.name;
    let what = format!("Athena workgroup {name}");
    let output = match client.get_work_group().work_group(name).send().await {
        Ok(output) => output,
        Err(error) if is_not_found(&error) => return Ok(None),
        Err(error)
            if code_of(&error) == Some("InvalidRequestException")
                && error_message_says_not_found(&error) =>
        {
            return Ok(None);
        }
        Err(error) => return Err(from_sdk("athena:GetWorkGroup", &what, error)),
    };
    let Some(workgroup) = output.work_group() else {
        return Ok(None);
    };
    let configuration = workgroup.configuration();
    let mut tags = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .list_tags_for_resource()
            .resource_arn(&desired.arn)
            .set_next_token(token.take())
            .send()
            .await
            .map_sdk("athena:ListTagsForResource", &what)?;
        for tag in page.tags() {
            if let Some(key) = tag.key() {
                tags.insert(key.to_owned(), tag.value().unwrap_or_default().to_owned());
            }
        }
        match page.next_token() {
            Some(next) if !next.is_empty() => token = Some(next.to_owned()),
            _ => break,
        }
    }
    Ok(Some(ObservedWorkgroup {
        name: workgroup.name().to_owned(),
        state: workgroup
            .state()
            .map(|state| state.as_str().to_owned())
            .unwrap_or_else(|| "ENABLED".to_owned()),
        output_location: configuration
            .and_then(WorkGroupConfiguration::result_configuration)
            .and_then(ResultConfiguration::output_location)
            .map(str::to_owned),
        enforce_configuration: configuration
            .and_then(WorkGroupConfiguration::enforce_work_group_configuration),
        bytes_scanned_cutoff_per_query: configuration
            .and_then(WorkGroupConfiguration::bytes_scanned_cutoff_per_query),
        results_encryption: configuration
            .and_then(WorkGroupConfiguration::result_configuration)
            .and_then(ResultConfiguration::encryption_configuration)
            .map(|encryption| ResultsEncryptionSetting {
                option: encryption.encryption_option().as_str().to_owned(),
                kms_key: encryption.kms_key().map(str::to_owned),
            }),
        tags,
    }))
}

fn error_message_says_not_found<E>(
    error: &aws_smithy_runtime_api::client::result::SdkError<
        E,
        aws_smithy_runtime_api::http::Response,
    >,
) -> bool
where
    E: aws_sdk_athena::error::ProvideErrorMetadata,
{
    use aws_sdk_athena::error::ProvideErrorMetadata;
    error
        .message()
        .is_some_and(|message| message.to_ascii_lowercase().contains("not found"))
}

fn sdk_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(key, value)| Tag::builder().key(key).value(value).build())
        .collect()
}

/// Makes one Athena call.
pub async fn apply(client: &Client, change: &Change) -> Result<(), Error> {
    match change {
        Change::CreateWorkGroup {
            workgroup,
            description,
            settings,
            tags,
        } => {
            let configuration = WorkGroupConfiguration::builder()
                .result_configuration(
                    ResultConfiguration::builder()
                        .output_location(&settings.output_location)
                        .encryption_configuration(settings.results_encryption.to_sdk()?)
                        .build(),
                )
                .enforce_work_group_configuration(settings.enforce_configuration)
                .set_bytes_scanned_cutoff_per_query(settings.bytes_scanned_cutoff_per_query)
                .build();
            client
                .create_work_group()
                .name(workgroup)
                .description(description)
                .configuration(configuration)
                .set_tags(Some(sdk_tags(tags)))
                .send()
                .await
                .map_sdk(
                    "athena:CreateWorkGroup",
                    format_args!("Athena workgroup {workgroup}"),
                )?;
            Ok(())
        }
        Change::TagResource {
            workgroup,
            resource_arn,
            tags,
        } => {
            client
                .tag_resource()
                .resource_arn(resource_arn)
                .set_tags(Some(sdk_tags(tags)))
                .send()
                .await
                .map_sdk(
                    "athena:TagResource",
                    format_args!("Athena workgroup {workgroup}"),
                )?;
            Ok(())
        }
        Change::UpdateWorkGroup {
            workgroup,
            settings,
            enable,
        } => {
            let mut updates = WorkGroupConfigurationUpdates::builder()
                .result_configuration_updates(
                    ResultConfigurationUpdates::builder()
                        .output_location(&settings.output_location)
                        .encryption_configuration(settings.results_encryption.to_sdk()?)
                        .build(),
                )
                .enforce_work_group_configuration(settings.enforce_configuration);
            updates = match settings.bytes_scanned_cutoff_per_query {
                Some(limit) => updates.bytes_scanned_cutoff_per_query(limit),
                None => updates.remove_bytes_scanned_cutoff_per_query(true),
            };
            let mut request = client
                .update_work_group()
                .work_group(workgroup)
                .configuration_updates(updates.build());
            if *enable {
                request = request.state(WorkGroupState::Enabled);
            }
            request.send().await.map_sdk(
                "athena:UpdateWorkGroup",
                format_args!("Athena workgroup {workgroup}"),
            )?;
            Ok(())
        }
    }
}

/// Deletes the workgroup (with its saved queries: `RecursiveDeleteOption`) under
/// `deletionPolicy: Delete` if this pipeline owns it.
pub async fn delete(client: &Client, desired: &DesiredWorkgroup) -> Result<Deletion, Error> {
    let name = &desired.name;
    let Some(observed) = observe(client, desired).await? else {
        return Ok(Deletion::Gone);
    };
    if let Some(kept) = left_in_place(
        &format!("Athena workgroup {name}"),
        &observed.tags,
        &desired.owner,
    ) {
        return Ok(kept);
    }
    client
        .delete_work_group()
        .work_group(name)
        .recursive_delete_option(true)
        .send()
        .await
        .map_sdk(
            "athena:DeleteWorkGroup",
            format_args!("Athena workgroup {name}"),
        )?;
    Ok(Deletion::Gone)
}

/// The query part: the pipeline's Athena workgroup.
pub struct Query;

impl PartReconciler for Query {
    const PART: Part = Part::Query;
    const CONDITION_TYPE: &'static str = "QueryReady";
    const NAME: &'static str = "query workgroup";
    const SERVICE: Service = Service::new("athena");

    type Desired = DesiredWorkgroup;
    type Observed = ObservedWorkgroup;
    type Change = Change;

    // Athena workgroup calls take effect before they return: nothing needs settling.
    fn apply<'a>(
        clients: &'a AwsClients,
        change: &'a Change,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        apply(&clients.athena, change)
    }

    fn desired(input: PlanInput<'_>) -> Result<Vec<DesiredWorkgroup>, Error> {
        Ok(vec![desired(input.spec, input.names)])
    }

    fn summary(desired: &[DesiredWorkgroup]) -> String {
        let names: Vec<&str> = desired.iter().map(|w| w.name.as_str()).collect();
        format!("Athena workgroup {} matches the spec", names.join(", "))
    }

    async fn observe(
        clients: &AwsClients,
        desired: &DesiredWorkgroup,
    ) -> Result<Option<ObservedWorkgroup>, Error> {
        observe(&clients.athena, desired).await
    }

    /// The calls that turn `observed` into `desired`. Empty when they match.
    fn diff(
        desired: &DesiredWorkgroup,
        observed: Option<&ObservedWorkgroup>,
    ) -> Result<Vec<Change>, Error> {
        let name = &desired.name;
        let Some(observed) = observed else {
            return Ok(vec![Change::CreateWorkGroup {
                workgroup: name.clone(),
                description: desired.description.clone(),
                settings: desired.settings.clone(),
                tags: desired.tags.clone(),
            }]);
        };
        check_owner(
            &format!("Athena workgroup {name}"),
            &observed.tags,
            &desired.owner,
            desired.adopt_existing,
        )?;
        let mut changes = Vec::new();
        changes.extend(tag_change(&observed.tags, &desired.tags, |tags| {
            Change::TagResource {
                workgroup: name.clone(),
                resource_arn: desired.arn.clone(),
                tags,
            }
        }));
        let mut settings = desired.settings.clone();
        // Never weakened: results encrypted with KMS stay so when the spec asks for SSE-S3 (see
        // [`kept`]).
        if let Some(existing) = &observed.results_encryption
            && existing.uses_kms()
            && !settings.results_encryption.uses_kms()
        {
            settings.results_encryption = existing.clone();
        }
        let enable = observed.state != "ENABLED";
        if enable
            || observed.output_location.as_deref() != Some(settings.output_location.as_str())
            || observed.enforce_configuration != Some(settings.enforce_configuration)
            || observed.bytes_scanned_cutoff_per_query != settings.bytes_scanned_cutoff_per_query
            || observed.results_encryption.as_ref() != Some(&settings.results_encryption)
        {
            changes.push(Change::UpdateWorkGroup {
                workgroup: name.clone(),
                settings,
                enable,
            });
        }
        Ok(changes)
    }

    /// What the workgroup has that is stronger than the spec asks, and keeps: results encrypted
    /// with KMS while the spec says SSE-S3.
    fn kept(desired: &DesiredWorkgroup, observed: Option<&ObservedWorkgroup>) -> Vec<String> {
        match observed.and_then(|o| o.results_encryption.as_ref()) {
            Some(existing)
                if existing.uses_kms() && !desired.settings.results_encryption.uses_kms() =>
            {
                vec![format!(
                    "Athena workgroup {} result encryption {}{}",
                    desired.name,
                    existing.option,
                    existing
                        .kms_key
                        .as_deref()
                        .map(|key| format!(" with key {key}"))
                        .unwrap_or_default()
                )]
            }
            _ => Vec::new(),
        }
    }

    /// A workgroup is ready when it exists and is enabled.
    fn readiness(_desired: &DesiredWorkgroup, observed: Option<&ObservedWorkgroup>) -> Readiness {
        match observed {
            Some(workgroup) if workgroup.state == "ENABLED" => Readiness::Ready,
            Some(workgroup) => Readiness::Provisioning(format!(
                "workgroup {} is {}",
                workgroup.name, workgroup.state
            )),
            None => Readiness::Provisioning("the workgroup does not exist yet".to_owned()),
        }
    }

    fn resources(
        desired: &DesiredWorkgroup,
        _observed: Option<&ObservedWorkgroup>,
        into: &mut PipelineResources,
    ) {
        into.workgroup = Some(desired.name.clone());
    }

    fn record(from: &PipelineResources, into: &mut PipelineResources) {
        into.workgroup.clone_from(&from.workgroup);
    }

    async fn delete(
        clients: &AwsClients,
        input: PlanInput<'_>,
        _done: &[DeleteStep],
    ) -> Result<Vec<(String, Deletion)>, Error> {
        let workgroup = desired(input.spec, input.names);
        let deletion = delete(&clients.athena, &workgroup).await?;
        Ok(vec![(
            format!("Athena workgroup {}", workgroup.name),
            deletion,
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fixture, names_for};

    fn in_sync(desired: &DesiredWorkgroup) -> ObservedWorkgroup {
        ObservedWorkgroup {
            name: desired.name.clone(),
            state: "ENABLED".into(),
            output_location: Some(desired.settings.output_location.clone()),
            enforce_configuration: Some(desired.settings.enforce_configuration),
            bytes_scanned_cutoff_per_query: desired.settings.bytes_scanned_cutoff_per_query,
            results_encryption: Some(desired.settings.results_encryption.clone()),
            tags: desired.tags.clone(),
        }
    }

    #[test]
    fn desired_from_the_examples() {
        let minimal = fixture("pipeline-minimal.yaml");
        let workgroup = desired(&minimal.spec, &names_for(&minimal));
        assert_eq!(workgroup.name, "heatmap-demo-wg");
        assert_eq!(
            workgroup.settings,
            WorkgroupSettings {
                output_location: "s3://shop-heatmap-athena-123456789012/athena-results/".into(),
                enforce_configuration: true,
                bytes_scanned_cutoff_per_query: None,
                results_encryption: ResultsEncryptionSetting {
                    option: "SSE_S3".into(),
                    kms_key: None,
                },
            }
        );
        let full = fixture("pipeline-full.yaml");
        let workgroup = desired(&full.spec, &names_for(&full));
        assert_eq!(workgroup.name, "shop-heatmap-wg");
        assert_eq!(
            workgroup.settings.bytes_scanned_cutoff_per_query,
            Some(1_073_741_824)
        );
    }

    #[test]
    fn results_are_encrypted_and_kms_is_never_weakened() {
        let mut minimal = fixture("pipeline-minimal.yaml");
        let workgroup = desired(&minimal.spec, &names_for(&minimal));
        // Unencrypted results: SSE-S3 is set.
        let mut observed = in_sync(&workgroup);
        observed.results_encryption = None;
        let changes = Query::diff(&workgroup, Some(&observed)).expect("diff");
        assert!(
            changes[0]
                .to_string()
                .contains("results encrypted with SSE_S3")
        );
        // The team's KMS key stays, and is said to be kept.
        let team = ResultsEncryptionSetting {
            option: "SSE_KMS".into(),
            kms_key: Some("alias/team".into()),
        };
        observed.results_encryption = Some(team.clone());
        assert_eq!(Query::diff(&workgroup, Some(&observed)), Ok(vec![]));
        assert_eq!(Query::kept(&workgroup, Some(&observed)).len(), 1);
        // A spec asking for another KMS key changes it.
        minimal.spec.query.results_encryption = ResultsEncryption::SseKms;
        minimal.spec.query.results_kms_key_id = Some("alias/heatmap".into());
        let workgroup = desired(&minimal.spec, &names_for(&minimal));
        let changes = Query::diff(&workgroup, Some(&observed)).expect("diff");
        assert!(
            changes[0].to_string().contains("SSE_KMS key alias/heatmap"),
            "{}",
            changes[0]
        );
    }

    #[test]
    fn create_sync_and_drift() {
        let full = fixture("pipeline-full.yaml");
        let workgroup = desired(&full.spec, &names_for(&full));
        let changes = Query::diff(&workgroup, None).expect("diff");
        assert_eq!(
            changes[0].to_string(),
            "create Athena workgroup shop-heatmap-wg (results to s3://shop-full-heatmap-athena-123456789012/athena-results/, enforced, at most 1073741824 bytes scanned per query, results encrypted with SSE_KMS key arn:aws:kms:ap-northeast-2:123456789012:alias/shop-heatmap), tagged clickheatmap.io/managed-by=clickheatmap-operator, clickheatmap.io/pipeline=default/shop-full, cost-center=4711, team=web"
        );
        assert_eq!(
            Query::diff(&workgroup, Some(&in_sync(&workgroup))),
            Ok(vec![])
        );
        let mut observed = in_sync(&workgroup);
        observed.bytes_scanned_cutoff_per_query = None;
        observed.state = "DISABLED".into();
        assert_eq!(
            Query::diff(&workgroup, Some(&observed)),
            Ok(vec![Change::UpdateWorkGroup {
                workgroup: "shop-heatmap-wg".into(),
                settings: workgroup.settings.clone(),
                enable: true,
            }])
        );
    }

    #[test]
    fn a_foreign_workgroup_conflicts() {
        let minimal = fixture("pipeline-minimal.yaml");
        let workgroup = desired(&minimal.spec, &names_for(&minimal));
        let mut observed = in_sync(&workgroup);
        observed.tags = Owner::new("default", "other").tags();
        assert!(Query::diff(&workgroup, Some(&observed)).is_err());
    }
}
