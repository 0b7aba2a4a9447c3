//! A call's config: the chain's override merged over the filter's defaults, then read into
//! the filter's typed config. Errors name the field.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The typed config for one call: `defaults` when there is no override.
pub(crate) fn resolve<C>(
    defaults: &C,
    default_json: &serde_json::Value,
    over: Option<serde_json::Value>,
) -> Result<C, String>
where
    C: DeserializeOwned + Serialize + Clone,
{
    let Some(over) = over.filter(|o| o.as_object().is_some_and(|m| !m.is_empty())) else {
        return Ok(defaults.clone());
    };
    let mut merged = default_json.clone();
    sekisho_proto::merge_config(&mut merged, over);
    from_json(merged)
}

fn from_json<C: DeserializeOwned>(v: serde_json::Value) -> Result<C, String> {
    serde_json::from_value(v).map_err(|e| format!("config: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Cfg {
        threshold: f64,
        nms: Nms,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Nms {
        method: String,
        sigma: f64,
    }

    impl Default for Nms {
        fn default() -> Self {
            Nms {
                method: "linear".into(),
                sigma: 0.5,
            }
        }
    }

    #[test]
    fn overrides_merge_deeply_over_defaults() {
        let d = Cfg::default();
        let dj = serde_json::to_value(&d).unwrap();
        let c: Cfg = resolve(
            &d,
            &dj,
            Some(serde_json::json!({"nms": {"method": "gaussian"}})),
        )
        .unwrap();
        assert_eq!(c.nms.method, "gaussian");
        assert_eq!(c.nms.sigma, 0.5);
        assert_eq!(c.threshold, 0.0);
    }

    #[test]
    fn unknown_fields_are_named() {
        let d = Cfg::default();
        let dj = serde_json::to_value(&d).unwrap();
        let e = resolve::<Cfg>(&d, &dj, Some(serde_json::json!({"treshold": 1}))).unwrap_err();
        assert!(e.contains("unknown field `treshold`"), "{e}");
    }
}
