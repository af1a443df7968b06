//! The settings every marketplace instance takes, read from the call context.
//!
//! Settings arrive as strings; one given as a TOML table or list in the configuration
//! arrives as JSON text. Each call parses them again: they are small, and a plugin keeps no
//! state outside its stores.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;
use simrelay_sdk::{CallContext, SettingSpec};

/// How many times a number is offered for one service before it is offered no more: the
/// protocol lets a cancelled activation (status 4) be offered again, up to this many times.
pub const DEFAULT_OFFER_CAP: u32 = 4;

/// Seconds between push attempts the marketplace did not accept, per the protocol.
pub const DEFAULT_RETRY_INTERVAL_SECS: u64 = 10;

/// Seconds a finished push or an ended activation is remembered: as long as the host's
/// default `dedupe_hours`, within which a repeated message gets no second push anyway.
pub const DEFAULT_FORGET_AFTER_SECS: u64 = 30 * 24 * 3600;

/// A setting that is missing or cannot be read. Names the setting, never its value: some
/// settings are secrets.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingError {
    pub setting: &'static str,
    pub problem: String,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "setting `{}` {}", self.setting, self.problem)
    }
}

impl From<SettingError> for String {
    fn from(error: SettingError) -> Self {
        error.to_string()
    }
}

fn problem(setting: &'static str, problem: impl Into<String>) -> SettingError {
    SettingError {
        setting,
        problem: problem.into(),
    }
}

/// What an instance was configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The partner key the marketplace issued: sent with pushes and queries.
    pub api_key: String,
    /// The key the marketplace sends in its requests.
    pub webhook_key: String,
    /// Service code → minimum price, for the services this instance sells.
    pub services: BTreeMap<String, Option<f64>>,
    pub sims: SimOverrides,
    pub codes: CodeOverrides,
    pub offer_cap: u32,
    pub retry_interval_ms: u64,
    pub forget_after_ms: u64,
}

/// The settings every marketplace plugin declares, besides its dialect's own.
pub fn specs() -> Vec<SettingSpec> {
    vec![
        SettingSpec::required(
            "api_key",
            "partner key the marketplace issued; sent with every push and query",
        )
        .secret(),
        SettingSpec::optional(
            "webhook_key",
            "key the marketplace sends in its requests (default: api_key)",
        )
        .secret(),
        SettingSpec::required(
            "services",
            r#"services sold: {"tg": 20.0, "wa": 0} (code → minimum price, 0 for none), ["tg", "wa"] or "tg,wa""#,
        ),
        SettingSpec::optional(
            "sims",
            r#"per-SIM facts by ICCID: {"8970…": {"number": "+7900…", "country": "russia", "operator": "mts", "call": true, "voice": false, "min_price": 5}} or {"8970…": "+7900…"}; "*" gives every SIM's call/voice/min_price"#,
        ),
        SettingSpec::optional(
            "mcc_mnc",
            r#"names beyond or instead of the built-in table: {"250": "russia", "25001": "mts", "25062": {"country": "russia", "operator": "tinkoff"}}"#,
        ),
        SettingSpec::optional(
            "offer_cap",
            "times a number is offered for one service before it is offered no more (default 4)",
        ),
        SettingSpec::optional(
            "retry_interval_secs",
            "seconds between PUSH_SMS attempts the marketplace did not accept (default 10)",
        ),
        SettingSpec::optional(
            "forget_after_secs",
            "seconds a pushed SMS and an ended activation are remembered (default 2592000, 30 days)",
        ),
    ]
}

impl Settings {
    pub fn from_context(ctx: &CallContext) -> Result<Self, SettingError> {
        let api_key = ctx
            .setting("api_key")
            .filter(|key| !key.is_empty())
            .ok_or_else(|| problem("api_key", "is not configured"))?
            .to_owned();
        let webhook_key = ctx
            .setting("webhook_key")
            .filter(|key| !key.is_empty())
            .map_or_else(|| api_key.clone(), str::to_owned);
        Ok(Settings {
            api_key,
            webhook_key,
            services: services(ctx.setting("services"))?,
            sims: SimOverrides::parse(ctx.setting("sims"))?,
            codes: CodeOverrides::parse(ctx.setting("mcc_mnc"))?,
            offer_cap: whole_number(ctx, "offer_cap", DEFAULT_OFFER_CAP.into(), 1)?
                .try_into()
                .map_err(|_| problem("offer_cap", "is too large"))?,
            retry_interval_ms: whole_number(
                ctx,
                "retry_interval_secs",
                DEFAULT_RETRY_INTERVAL_SECS,
                1,
            )?
            .saturating_mul(1000),
            forget_after_ms: whole_number(ctx, "forget_after_secs", DEFAULT_FORGET_AFTER_SECS, 1)?
                .saturating_mul(1000),
        })
    }

    /// The minimum price of a service this instance sells; `None` when it does not sell it.
    pub fn service(&self, code: &str) -> Option<Option<f64>> {
        self.services.get(code).copied()
    }
}

/// A whole number setting, `default` when absent or empty, refused below `minimum`.
pub fn whole_number(
    ctx: &CallContext,
    setting: &'static str,
    default: u64,
    minimum: u64,
) -> Result<u64, SettingError> {
    match ctx.setting(setting).map(str::trim) {
        None | Some("") => Ok(default),
        Some(text) => text
            .parse()
            .ok()
            .filter(|value| *value >= minimum)
            .ok_or_else(|| {
                problem(
                    setting,
                    format!("is not a whole number of at least {minimum}"),
                )
            }),
    }
}

/// `{"tg": 20.0, "wa": 0}`, `["tg", "wa"]` or `tg,wa`.
fn services(raw: Option<&str>) -> Result<BTreeMap<String, Option<f64>>, SettingError> {
    const NAME: &str = "services";
    let raw = raw.map(str::trim).unwrap_or_default();
    if raw.is_empty() {
        return Err(problem(NAME, "is not configured"));
    }
    let mut services = BTreeMap::new();
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(entries)) => {
            for (code, floor) in entries {
                let floor = price(&floor).ok_or_else(|| {
                    problem(NAME, format!("gives `{code}` a price that is not a number"))
                })?;
                services.insert(code, floor.filter(|floor| *floor > 0.0));
            }
        }
        Ok(Value::Array(codes)) => {
            for code in codes {
                let code = code
                    .as_str()
                    .ok_or_else(|| problem(NAME, "lists a service code that is not a string"))?;
                services.insert(code.to_owned(), None);
            }
        }
        Ok(_) => {
            return Err(problem(
                NAME,
                "is neither a table, a list nor comma-separated codes",
            ));
        }
        // Not JSON: comma-separated codes, as an environment variable gives them.
        Err(_) => {
            for code in raw
                .split(',')
                .map(str::trim)
                .filter(|code| !code.is_empty())
            {
                services.insert(code.to_owned(), None);
            }
        }
    }
    services.retain(|code, _| !code.trim().is_empty());
    if services.is_empty() {
        return Err(problem(NAME, "names no service"));
    }
    Ok(services)
}

/// A price as JSON: a number, a numeric string (`"20.00"`) or null for none.
pub fn price(value: &Value) -> Option<Option<f64>> {
    match value {
        Value::Null => Some(None),
        Value::Number(number) => number.as_f64().map(Some),
        Value::String(text) if text.trim().is_empty() => Some(None),
        Value::String(text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|p| p.is_finite())
            .map(Some),
        _ => None,
    }
}

/// What the configuration says about one SIM card, by ICCID.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimOverride {
    pub number: Option<String>,
    pub country: Option<String>,
    pub operator: Option<String>,
    pub call: Option<bool>,
    pub voice: Option<bool>,
    pub min_price: Option<f64>,
}

/// The `sims` setting: per-ICCID facts, and defaults under `*`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimOverrides {
    by_iccid: BTreeMap<String, SimOverride>,
    defaults: SimOverride,
}

impl SimOverrides {
    fn parse(raw: Option<&str>) -> Result<Self, SettingError> {
        const NAME: &str = "sims";
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Entry {
            Number(String),
            Facts(SimOverride),
        }
        let raw = raw.map(str::trim).unwrap_or_default();
        if raw.is_empty() {
            return Ok(Self::default());
        }
        let entries: BTreeMap<String, Entry> = serde_json::from_str(raw).map_err(|_| {
            problem(NAME, "is not a table of ICCIDs to a number or to {number, country, operator, call, voice, min_price}")
        })?;
        let mut overrides = SimOverrides::default();
        for (iccid, entry) in entries {
            let facts = match entry {
                Entry::Number(number) => SimOverride {
                    number: Some(number),
                    ..SimOverride::default()
                },
                Entry::Facts(facts) => facts,
            };
            if let Some(number) = &facts.number
                && simrelay_sdk::phone::international_digits(number).is_none()
            {
                return Err(problem(
                    NAME,
                    format!("gives {iccid} a number that is not a phone number"),
                ));
            }
            if iccid == "*" {
                overrides.defaults = facts;
            } else {
                overrides.by_iccid.insert(iccid.trim().to_owned(), facts);
            }
        }
        Ok(overrides)
    }

    /// The facts configured for a SIM; empty when nothing is.
    pub fn for_iccid(&self, iccid: Option<&str>) -> Option<&SimOverride> {
        self.by_iccid.get(iccid?)
    }

    /// Facts given for every SIM.
    pub fn defaults(&self) -> &SimOverride {
        &self.defaults
    }
}

/// A name the configuration gives an MCC+MNC code.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkName {
    pub country: Option<String>,
    pub operator: String,
}

/// The `mcc_mnc` setting: country names by MCC, operator names by MCC+MNC.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CodeOverrides {
    pub countries: BTreeMap<String, String>,
    pub networks: BTreeMap<String, NetworkName>,
}

impl CodeOverrides {
    fn parse(raw: Option<&str>) -> Result<Self, SettingError> {
        const NAME: &str = "mcc_mnc";
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Entry {
            Name(String),
            Network {
                country: Option<String>,
                operator: String,
            },
        }
        let raw = raw.map(str::trim).unwrap_or_default();
        if raw.is_empty() {
            return Ok(Self::default());
        }
        let entries: BTreeMap<String, Entry> = serde_json::from_str(raw).map_err(|_| {
            problem(
                NAME,
                r#"is not a table of codes to a name or to {"country", "operator"}"#,
            )
        })?;
        let mut overrides = CodeOverrides::default();
        for (code, entry) in entries {
            let digits = code.chars().all(|c| c.is_ascii_digit());
            match (code.len(), entry) {
                (3, Entry::Name(country)) if digits => {
                    overrides.countries.insert(code, lower(&country));
                }
                (5 | 6, Entry::Name(operator)) if digits => {
                    let name = NetworkName {
                        country: None,
                        operator: lower(&operator),
                    };
                    overrides.networks.insert(code, name);
                }
                (5 | 6, Entry::Network { country, operator }) if digits => {
                    let name = NetworkName {
                        country: country.as_deref().map(lower),
                        operator: lower(&operator),
                    };
                    overrides.networks.insert(code, name);
                }
                _ => {
                    return Err(problem(
                        NAME,
                        format!(
                            "has `{code}`: keys are an MCC (3 digits) naming a country or an MCC+MNC (5 or 6 digits) naming an operator"
                        ),
                    ));
                }
            }
        }
        Ok(overrides)
    }
}

/// Marketplaces name countries and operators in lower case (`russia`, `beeline`).
pub fn lower(name: &str) -> String {
    name.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[(&str, &str)]) -> Result<Settings, SettingError> {
        let mut settings = vec![("api_key", "k"), ("services", "tg")];
        settings.retain(|(name, _)| !extra.iter().any(|(other, _)| other == name));
        settings.extend_from_slice(extra);
        Settings::from_context(&CallContext::for_tests(&settings))
    }

    #[test]
    fn defaults() {
        let settings = parse(&[]).unwrap();
        assert_eq!(settings.api_key, "k");
        assert_eq!(
            settings.webhook_key, "k",
            "the api key unless told otherwise"
        );
        assert_eq!(settings.offer_cap, 4);
        assert_eq!(settings.retry_interval_ms, 10_000);
        assert_eq!(settings.service("tg"), Some(None));
        assert_eq!(settings.service("wa"), None);
        assert_eq!(settings.sims, SimOverrides::default());
        assert_eq!(settings.codes, CodeOverrides::default());
    }

    #[test]
    fn services_in_every_form() {
        for raw in [
            r#"["tg","wa"]"#,
            "tg, wa",
            " tg,wa,",
            r#"{"tg":0,"wa":null}"#,
        ] {
            let services = parse(&[("services", raw)]).unwrap().services;
            assert_eq!(
                services.into_iter().collect::<Vec<_>>(),
                [("tg".to_owned(), None), ("wa".to_owned(), None)],
                "{raw}"
            );
        }
        let priced = parse(&[("services", r#"{"tg": 20.5, "wa": "3.00", "vk": ""}"#)]).unwrap();
        assert_eq!(priced.service("tg"), Some(Some(20.5)));
        assert_eq!(priced.service("wa"), Some(Some(3.0)));
        assert_eq!(priced.service("vk"), Some(None));
    }

    #[test]
    fn bad_services_are_named() {
        for raw in [
            "",
            "[]",
            "{}",
            "[1]",
            r#"{"tg": "cheap"}"#,
            r#"{"tg": []}"#,
            "7",
            ",",
        ] {
            let error = parse(&[("services", raw)]).unwrap_err();
            assert_eq!(error.setting, "services", "{raw}");
        }
    }

    #[test]
    fn missing_key_is_named_without_a_value() {
        let error =
            Settings::from_context(&CallContext::for_tests(&[("services", "tg")])).unwrap_err();
        assert_eq!(error.to_string(), "setting `api_key` is not configured");
        let own = parse(&[("webhook_key", "incoming")]).unwrap();
        assert_eq!(
            (own.api_key.as_str(), own.webhook_key.as_str()),
            ("k", "incoming")
        );
    }

    #[test]
    fn whole_numbers() {
        assert_eq!(parse(&[("offer_cap", "2")]).unwrap().offer_cap, 2);
        assert_eq!(parse(&[("offer_cap", " ")]).unwrap().offer_cap, 4);
        assert_eq!(
            parse(&[("retry_interval_secs", "30")])
                .unwrap()
                .retry_interval_ms,
            30_000
        );
        for (setting, bad) in [
            ("offer_cap", "0"),
            ("offer_cap", "-1"),
            ("retry_interval_secs", "1.5"),
            ("offer_cap", "99999999999"),
        ] {
            let error = parse(&[(setting, bad)]).unwrap_err();
            assert_eq!(error.setting, setting, "{bad}");
        }
    }

    #[test]
    fn sims_by_iccid_with_defaults() {
        let sims = parse(&[(
            "sims",
            r#"{"8970": "+79001234567",
                "8971": {"number": "79001112233", "country": "russia", "call": true, "min_price": 5},
                "*": {"voice": true}}"#,
        )])
        .unwrap()
        .sims;
        assert_eq!(
            sims.for_iccid(Some("8970")).unwrap().number.as_deref(),
            Some("+79001234567")
        );
        let second = sims.for_iccid(Some("8971")).unwrap();
        assert_eq!((second.call, second.min_price), (Some(true), Some(5.0)));
        assert_eq!(sims.for_iccid(Some("8972")), None);
        assert_eq!(sims.for_iccid(None), None);
        assert_eq!(sims.defaults().voice, Some(true));
    }

    #[test]
    fn bad_sims_are_named() {
        for raw in [
            "[]",
            r#"{"8970": 7}"#,
            r#"{"8970": {"numbr": "1"}}"#,
            r#"{"8970": "Bank"}"#,
        ] {
            assert_eq!(
                parse(&[("sims", raw)]).unwrap_err().setting,
                "sims",
                "{raw}"
            );
        }
    }

    #[test]
    fn code_overrides() {
        let codes = parse(&[(
            "mcc_mnc",
            r#"{"250": "Russia", "25001": "MTS", "310260": {"country": "usa", "operator": "tmobile"}}"#,
        )])
        .unwrap()
        .codes;
        assert_eq!(codes.countries["250"], "russia");
        assert_eq!(
            codes.networks["25001"],
            NetworkName {
                country: None,
                operator: "mts".into()
            }
        );
        assert_eq!(codes.networks["310260"].country.as_deref(), Some("usa"));
        for raw in [
            r#"{"25": "x"}"#,
            r#"{"abc": "x"}"#,
            r#"{"250": {"operator": "x"}}"#,
            "[1]",
        ] {
            assert_eq!(
                parse(&[("mcc_mnc", raw)]).unwrap_err().setting,
                "mcc_mnc",
                "{raw}"
            );
        }
    }
}
