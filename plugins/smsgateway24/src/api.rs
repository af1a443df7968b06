//! The SmsGateway24 API as far as this plugin uses it: the requests it builds and the answers
//! it reads. Every answer is JSON with `error` 0 or 1, also with HTTP 200.

use serde_json::{Value, json};
use simrelay_sdk::lenient::{self, field, first_field};
use simrelay_sdk::time::{format_datetime, parse_datetime};
use simrelay_sdk::{DeliveryState, OutgoingRequest, SendRequest};

/// Per-attempt timeout for every request.
const TIMEOUT_MS: u32 = 20_000;

fn with_timeout(request: OutgoingRequest) -> OutgoingRequest {
    OutgoingRequest {
        timeout_ms: Some(TIMEOUT_MS),
        ..request.with_header("accept", "application/json")
    }
}

/// `getdata/gettoken` (GET only, per the documentation).
pub(crate) fn get_token(base_url: &str, email: &str, password: &str) -> OutgoingRequest {
    let url = format!("{base_url}/getdata/gettoken");
    with_timeout(OutgoingRequest::get(
        &url,
        &[("email", email), ("pass", password)],
    ))
}

/// `getdata/<method>` with a form body; `+` goes out as `%2B`.
pub(crate) fn post(base_url: &str, method: &str, fields: &[(&str, String)]) -> OutgoingRequest {
    let url = format!("{base_url}/getdata/{method}");
    with_timeout(OutgoingRequest::post_form(&url, fields))
}

/// One SMS as `addsms` takes it, and as an element of `addalotofsms`'s `smsdata`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outgoing {
    pub sendto: String,
    pub body: String,
    pub device_id: String,
    pub sim: Option<String>,
    pub timetosend: Option<String>,
    pub customerid: u64,
    pub urgent: bool,
}

impl Outgoing {
    pub fn new(request: &SendRequest, device_id: String, customerid: u64, offset: i32) -> Self {
        Outgoing {
            sendto: request.to.trim().to_owned(),
            body: request.text.clone(),
            device_id,
            sim: request.sim.clone().filter(|sim| !sim.trim().is_empty()),
            timetosend: request.send_at_ms.map(|at| format_datetime(at, offset)),
            customerid,
            urgent: request.urgent,
        }
    }

    /// The form fields of `addsms`, token first.
    pub fn form(&self, token: &str) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("token", token.to_owned()),
            ("sendto", self.sendto.clone()),
            ("body", self.body.clone()),
            ("device_id", self.device_id.clone()),
            ("customerid", self.customerid.to_string()),
        ];
        if let Some(sim) = &self.sim {
            fields.push(("sim", sim.clone()));
        }
        if let Some(at) = &self.timetosend {
            fields.push(("timetosend", at.clone()));
        }
        if self.urgent {
            fields.push(("urgent", "1".into()));
        }
        fields
    }

    /// One element of `addalotofsms`'s `smsdata`.
    pub fn json(&self) -> Value {
        let number = |text: &str| {
            text.parse::<u64>()
                .map_or_else(|_| Value::from(text), Value::from)
        };
        let mut item = json!({
            "sendto": self.sendto,
            "body": self.body,
            "device_id": number(&self.device_id),
            "customerid": self.customerid,
            "urgent": u8::from(self.urgent),
        });
        if let Some(sim) = &self.sim {
            item["sim"] = number(sim);
        }
        if let Some(at) = &self.timetosend {
            item["timetosend"] = Value::from(at.as_str());
        }
        item
    }
}

/// `addalotofsms`: one request for many SMS, as `datajson`.
pub(crate) fn add_many(base_url: &str, token: &str, batch: &[Outgoing]) -> OutgoingRequest {
    let data = json!({
        "token": token,
        "smsdata": batch.iter().map(Outgoing::json).collect::<Vec<_>>(),
    });
    post(base_url, "addalotofsms", &[("datajson", data.to_string())])
}

/// Why an answer was not what was asked for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refusal {
    pub message: String,
    /// The token is missing, wrong or expired: get a new one and ask again.
    pub token_rejected: bool,
    /// An answer that cannot be read: the request may or may not have taken effect.
    pub unreadable: bool,
}

/// The JSON of a 2xx answer, or why it is a refusal: `{"error":1,"message":…}` is one even
/// with HTTP 200. A refusal whose message speaks of the token means the token is no longer
/// valid (the service documents no code for it).
pub(crate) fn answer(status: u16, body: &[u8]) -> Result<Value, Refusal> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed
        .as_ref()
        .and_then(|value| value.get("error"))
        .and_then(lenient::integer)
        .unwrap_or(0);
    let message = parsed
        .as_ref()
        .and_then(|value| field(value, "message"))
        .unwrap_or_else(|| excerpt(body));
    let token_rejected =
        matches!(status, 401 | 403) || (error != 0 && message.to_lowercase().contains("token"));
    match parsed {
        Some(value) if (200..300).contains(&status) && error == 0 && value.is_object() => Ok(value),
        Some(_) if (200..300).contains(&status) || error != 0 => Err(Refusal {
            message: if error != 0 {
                message
            } else {
                format!("unexpected answer: {}", excerpt(body))
            },
            token_rejected,
            unreadable: error == 0,
        }),
        _ => Err(Refusal {
            message: format!("HTTP {status}: {}", excerpt(body)),
            token_rejected,
            unreadable: (200..300).contains(&status),
        }),
    }
}

/// The start of a body, for an error message.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut excerpt: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        excerpt.push('…');
    }
    excerpt
}

/// SmsGateway24's SMS status codes (1, 3, 2 is the order an SMS goes through them).
pub(crate) fn delivery_state(code: u64) -> DeliveryState {
    match code {
        6 => DeliveryState::Sent,
        7 => DeliveryState::Delivered,
        8..=12 | 100 | 101 => DeliveryState::Failed,
        _ => DeliveryState::Pending,
    }
}

/// The status code that marks an incoming SMS in `getallsms`.
pub(crate) const INCOMING: u64 = 5;

/// The service's words for a status code, for codes it sends without a title.
pub(crate) fn status_title(code: u64) -> &'static str {
    match code {
        1 => "pending",
        2 => "taken by the phone",
        3 => "queued for sending",
        5 => "incoming",
        6 => "sent",
        7 => "delivered",
        8 => "not delivered",
        9 => "generic failure",
        10 => "no service",
        11 => "null PDU",
        12 => "radio off",
        100 | 101 => "not allowed",
        _ => "unknown status",
    }
}

/// An SMS of a `getallsms` listing.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListedSms {
    pub id: String,
    pub status: Option<u64>,
    pub status_title: Option<String>,
    /// The other party: the recipient of an SMS we sent, the sender of an incoming one.
    pub address: String,
    pub body: String,
    pub device_id: Option<String>,
    pub sim: Option<String>,
    pub customerid: Option<u64>,
    pub created_ms: Option<u64>,
}

/// The SMS of a `getallsms` answer: `smss` keyed by id (or a list).
pub(crate) fn listed_sms(answer: &Value, offset: i32) -> Vec<ListedSms> {
    lenient::items(answer.get("smss").unwrap_or(&Value::Null))
        .into_iter()
        .filter_map(|item| {
            Some(ListedSms {
                id: field(item, "id")?,
                status: item.get("status").and_then(lenient::leading_number),
                status_title: field(item, "statustitle"),
                address: first_field(item, &["address", "sendto", "phone", "from"])
                    .unwrap_or_default(),
                body: item
                    .get("body")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                device_id: first_field(item, &["deviceid", "device_id"]),
                sim: first_field(item, &["sim", "channel_id"]),
                customerid: item.get("customerid").and_then(lenient::leading_number),
                created_ms: item.get("created").and_then(|at| service_time(at, offset)),
            })
        })
        .collect()
}

/// A time as the service writes it: `{"date":"2023-11-02 22:44:43.000000","timezone":"UTC"}`
/// or plain text. Zone names other than UTC cannot be resolved without a zone database: such
/// times are read at the configured `utc_offset_minutes`.
pub(crate) fn service_time(value: &Value, offset: i32) -> Option<u64> {
    let (date, zone) = match value {
        Value::Object(_) => (field(value, "date")?, field(value, "timezone")),
        _ => (lenient::text(value)?, None),
    };
    match zone.as_deref() {
        Some(zone @ ("UTC" | "Z" | "GMT")) => parse_datetime(&format!("{date} {zone}"), 0),
        Some(zone) if zone.starts_with(['+', '-']) => parse_datetime(&format!("{date}{zone}"), 0),
        _ => parse_datetime(&date, offset),
    }
}

/// One SIM of one device, from `getalldevices`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeviceSim {
    pub device_id: String,
    pub slot: Option<String>,
    pub number: Option<String>,
    pub iccid: Option<String>,
    pub operator: Option<String>,
    pub last_seen_ms: Option<u64>,
}

/// The SIMs of a `getalldevices` answer; a device without SIM info is one entry without slot.
pub(crate) fn device_sims(answer: &Value, offset: i32) -> Vec<DeviceSim> {
    let mut sims = Vec::new();
    for device in lenient::items(answer.get("device").unwrap_or(&Value::Null)) {
        let Some(device_id) = field(device, "id") else {
            continue;
        };
        let last_seen_ms = device
            .get("lastseen")
            .and_then(|at| service_time(at, offset))
            .or_else(|| {
                field(device, "lastseenhumanformat").and_then(|at| parse_datetime(&at, offset))
            });
        let siminfo = lenient::items(device.get("siminfo").unwrap_or(&Value::Null));
        if siminfo.is_empty() {
            sims.push(DeviceSim {
                device_id: device_id.clone(),
                slot: None,
                number: device.get("number").and_then(sim_number),
                iccid: None,
                operator: None,
                last_seen_ms,
            });
        }
        for sim in siminfo {
            sims.push(DeviceSim {
                device_id: device_id.clone(),
                slot: first_field(sim, &["Slot", "slot"]),
                number: ["Number", "number"]
                    .iter()
                    .find_map(|name| sim.get(*name).and_then(sim_number)),
                iccid: first_field(sim, &["IccId", "iccid"]),
                operator: first_field(sim, &["CarrierName", "carrier"]),
                last_seen_ms,
            });
        }
    }
    sims
}

/// The service shows some numbers with a space where the `+` was (`" 15555215554"`): a `+`
/// that went through a query string unencoded, where it means a space. A number that starts
/// with a space and is otherwise digits gets its `+` back.
fn sim_number(value: &Value) -> Option<String> {
    let number = lenient::text(value)?;
    match value.as_str() {
        Some(raw) if raw.starts_with(' ') && number.bytes().all(|b| b.is_ascii_digit()) => {
            Some(format!("+{number}"))
        }
        _ => Some(number),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The provider document's `getallsms` answer.
    pub(crate) const GETALLSMS_SAMPLE: &str = r#"{ "smss": { "62050971": { "id": 62050971, "sendto": "+4912312312332", "body": "Hello! Thank you for Order! ", "customerid": null, "status": 2, "statustitle": "sending", "deviceid": 11231, "urgent": null, "created": { "date": "2023-11-02 22:44:43.000000", "timezone_type": 3, "timezone": "Europe/Paris" }, "senttime": null, "timetosend": null, "paketid": null, "pakettitle": null, "paketbody": null }, "62051117": { "id": 62051117, "sendto": "+4912312312332", "body": "Hello! Thank you for Order! ", "customerid": null, "status": 7, "statustitle": "delivered", "deviceid": 11231, "urgent": null, "created": { "date": "2023-11-02 22:46:09.000000", "timezone_type": 3, "timezone": "Europe/Paris" }, "senttime": null, "timetosend": null, "paketid": null, "pakettitle": null, "paketbody": null } } }"#;

    /// The provider document's `getalldevices` answer.
    pub(crate) const GETALLDEVICES_SAMPLE: &str = r#"{
    "count": 2,
    "device": {
        "1576": {
            "id": 1576, "title": "AOSP_on_IA_Emulator", "number": null, "imei": "358240051111110",
            "created": { "date": "2020-03-28 20:10:29.000000", "timezone_type": 3, "timezone": "UTC" },
            "createdhumanformat": "28.03.2020 20:10:29",
            "lastseen": { "date": "2020-04-23 17:02:21.000000", "timezone_type": 3, "timezone": "UTC" },
            "lastseenhumanformat": "23.04.2020 17:02:21",
            "serialnumber": "EMULATOR30X0X5X0",
            "siminfo": [ { "Slot": "0", "IccId": "89014103211118510720", "Number": " 15555215554",
                           "Roaming": "0", "CountryIso": "us", "CarrierName": "Android (T-Mobile)" } ],
            "appversion": "12.1.21", "isappversionactual": false, "delaybetweeneachsms": null,
            "delaybetweenrequest": 1, "subscription": true
        },
        "1297": {
            "id": 1297, "title": "Android_SDK_built_for_x86", "number": null, "imei": "null",
            "created": { "date": "2020-01-20 14:01:05.000000", "timezone_type": 3, "timezone": "UTC" },
            "createdhumanformat": "20.01.2020 14:01:05",
            "lastseen": { "date": "2020-04-20 20:51:34.000000", "timezone_type": 3, "timezone": "UTC" },
            "lastseenhumanformat": "20.04.2020 20:51:34",
            "serialnumber": "unknown",
            "siminfo": [ { "Slot": "0", "IccId": "8949226172233934327", "Number": "+4915752982212",
                           "Roaming": "1", "CountryIso": "de", "CarrierName": "Drillisch (o2)" } ],
            "appversion": "12.1.21", "isappversionactual": false, "delaybetweeneachsms": 5,
            "delaybetweenrequest": 10, "subscription": false
        }
    }
}"#;

    fn request() -> SendRequest {
        SendRequest {
            id: "s1".into(),
            to: " +4915752982212 ".into(),
            text: "Code 1+1=2 & more".into(),
            device: None,
            sim: Some("1".into()),
            send_at_ms: Some(1_562_025_000_000),
            urgent: true,
        }
    }

    #[test]
    fn provider_answer_samples() {
        let token = answer(
            200,
            br#"{"error":0,"message":"OK","token":"abbde3e31e9d026c02f41119fc551111e"}"#,
        )
        .unwrap();
        assert_eq!(token["token"], "abbde3e31e9d026c02f41119fc551111e");
        let refusal = answer(
            200,
            br#"{"error":1,"message":"Login or password incorrect"}"#,
        )
        .unwrap_err();
        assert_eq!(refusal.message, "Login or password incorrect");
        assert!(!refusal.token_rejected && !refusal.unreadable);
        let added = answer(
            200,
            br#"{ "error": 0, "sms_id": 62807347, "message": "Sms has been saved successfully"}"#,
        )
        .unwrap();
        assert_eq!(added["sms_id"], 62_807_347);
        assert!(answer(200, br#"{ "error": 0, "tag_id": 8303, "message": "OK" }"#).is_ok());
        assert!(answer(200, br#"{"error":0,"contact_id":15954765,"message":"ok"}"#).is_ok());
    }

    #[test]
    fn refusals() {
        let expired = answer(200, br#"{"error":"1","message":"Token not found"}"#).unwrap_err();
        assert!(expired.token_rejected);
        assert!(answer(401, b"").unwrap_err().token_rejected);
        let garbage = answer(200, b"<html>oops</html>").unwrap_err();
        assert!(garbage.unreadable && garbage.message.contains("<html>oops"));
        let list = answer(200, b"[1]").unwrap_err();
        assert!(list.unreadable);
        let down = answer(502, b"bad gateway").unwrap_err();
        assert!(!down.unreadable);
        assert_eq!(down.message, "HTTP 502: bad gateway");
        let refused = answer(500, br#"{"error":1,"message":"busy"}"#).unwrap_err();
        assert_eq!(refused.message, "busy");
    }

    #[test]
    fn send_requests_encode_plus_signs() {
        let outgoing = Outgoing::new(&request(), "260".into(), 7, 0);
        let add = post("https://sg.test", "addsms", &outgoing.form("tk"));
        assert_eq!(add.url, "https://sg.test/getdata/addsms");
        assert_eq!(
            String::from_utf8(add.body).unwrap(),
            "token=tk&sendto=%2B4915752982212&body=Code%201%2B1%3D2%20%26%20more&device_id=260\
             &customerid=7&sim=1&timetosend=2019-07-01%2023%3A50%3A00&urgent=1"
        );
        let many = add_many("https://sg.test", "tk", &[outgoing.clone(), outgoing]);
        let body = String::from_utf8(many.body).unwrap();
        let pairs = simrelay_sdk::encoding::form_decode(&body);
        assert_eq!(pairs[0].0, "datajson");
        let data: Value = serde_json::from_str(&pairs[0].1).unwrap();
        assert_eq!(data["token"], "tk");
        assert_eq!(data["smsdata"][1]["sendto"], "+4915752982212");
        assert_eq!(data["smsdata"][0]["device_id"], 260);
        assert_eq!(data["smsdata"][0]["sim"], 1);
        assert_eq!(data["smsdata"][0]["timetosend"], "2019-07-01 23:50:00");
        let token = get_token("https://sg.test", "a+b@x.org", "p&ss");
        assert_eq!(
            token.url,
            "https://sg.test/getdata/gettoken?email=a%2Bb%40x.org&pass=p%26ss"
        );
    }

    #[test]
    fn listed_sms_of_the_sample() {
        let listed = listed_sms(&serde_json::from_str(GETALLSMS_SAMPLE).unwrap(), 60);
        assert_eq!(listed.len(), 2);
        let first = &listed[0];
        assert_eq!(first.id, "62050971");
        assert_eq!(first.status, Some(2));
        assert_eq!(first.address, "+4912312312332");
        assert_eq!(first.device_id.as_deref(), Some("11231"));
        assert_eq!(first.customerid, None);
        // "Europe/Paris" read at the configured offset.
        assert_eq!(first.created_ms, parse_datetime("2023-11-02 21:44:43", 0));
        assert_eq!(listed[1].status, Some(7));
    }

    #[test]
    fn devices_of_the_sample() {
        let sims = device_sims(&serde_json::from_str(GETALLDEVICES_SAMPLE).unwrap(), 0);
        assert_eq!(sims.len(), 2);
        let emulator = sims.iter().find(|sim| sim.device_id == "1576").unwrap();
        assert_eq!(emulator.slot.as_deref(), Some("0"));
        assert_eq!(emulator.number.as_deref(), Some("+15555215554"));
        assert_eq!(emulator.iccid.as_deref(), Some("89014103211118510720"));
        assert_eq!(emulator.operator.as_deref(), Some("Android (T-Mobile)"));
        assert_eq!(
            emulator.last_seen_ms,
            parse_datetime("2020-04-23 17:02:21", 0)
        );
        let other = sims.iter().find(|sim| sim.device_id == "1297").unwrap();
        assert_eq!(other.number.as_deref(), Some("+4915752982212"));
    }

    #[test]
    fn states() {
        assert_eq!(delivery_state(1), DeliveryState::Pending);
        assert_eq!(delivery_state(3), DeliveryState::Pending);
        assert_eq!(delivery_state(6), DeliveryState::Sent);
        assert_eq!(delivery_state(7), DeliveryState::Delivered);
        for code in [8, 9, 10, 11, 12, 100, 101] {
            assert_eq!(delivery_state(code), DeliveryState::Failed);
        }
        assert_eq!(status_title(11), "null PDU");
        assert_eq!(
            service_time(
                &json!({"date": "2020-01-01 00:00:00", "timezone": "+01:00"}),
                0
            ),
            parse_datetime("2019-12-31 23:00:00", 0)
        );
        assert_eq!(
            service_time(&json!("2020-01-01 01:00:00"), 60),
            parse_datetime("2020-01-01 00:00:00", 0)
        );
    }
}
