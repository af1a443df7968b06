//! Reconciliation, for marketplaces that can be asked (SmsBower's `Get status` and
//! `Get statistic`): a FINISH_ACTIVATION that never reached us must not leave a number
//! leased forever, and the marketplace's count of our SIM cards should match ours.
//!
//! simrelay never ends an activation on its own: it asks, and applies the marketplace's
//! answer. Own keys: `reconcile/statistic-at`, and `checked_ms` in each activation.

use serde_json::Value;
use simrelay_sdk::{
    CallContext, Delivery, DeliveryOutcome, Effects, KeyValue, SettingSpec, Verdict,
};

use crate::activation::{self, Closing, EndedBy};
use crate::answers::{self, Answer};
use crate::settings::{Settings, whole_number};
use crate::usage::Ending;
use crate::{Dialect, inventory};

/// Idempotency keys `status/<activation>/<ms>` and `statistic/<ms>`: unique per query, and
/// a response leads back to what was asked.
pub const STATUS_PREFIX: &str = "status/";
pub const STATISTIC_PREFIX: &str = "statistic/";
const STATISTIC_AT: &str = "reconcile/statistic-at";

/// An activation still open this long after it was issued, or last asked about, is asked
/// about. Marketplaces give a buyer about 20 minutes for a code.
pub const DEFAULT_RECONCILE_AFTER_SECS: u64 = 1800;
pub const DEFAULT_STATISTIC_INTERVAL_SECS: u64 = 3600;

pub fn specs() -> Vec<SettingSpec> {
    vec![
        SettingSpec::optional(
            "reconcile_after_secs",
            "ask the marketplace about activations open this long, and again as often (default 1800; 0 never)",
        ),
        SettingSpec::optional(
            "statistic_interval_secs",
            "fetch the marketplace's SIM statistics this often and log a count that differs from ours (default 3600; 0 never)",
        ),
    ]
}

/// The queries due now.
pub fn on_tick<D: Dialect>(
    ctx: &CallContext,
    settings: &Settings,
    own: &dyn KeyValue,
) -> Result<Effects, String> {
    let mut deliveries = Vec::new();
    let after_ms = whole_number(ctx, "reconcile_after_secs", DEFAULT_RECONCILE_AFTER_SECS, 0)?
        .saturating_mul(1000);
    if after_ms > 0 {
        for mut open in activation::open_activations(own)? {
            let since = open.checked_ms.unwrap_or(open.issued_ms);
            if ctx.now_ms.saturating_sub(since) < after_ms {
                continue;
            }
            let Some(request) = D::status_query(ctx, settings, open.id)? else {
                break;
            };
            deliveries.push(Delivery {
                idempotency_key: format!("{STATUS_PREFIX}{}/{}", open.id, ctx.now_ms),
                request,
            });
            open.checked_ms = Some(ctx.now_ms);
            activation::update(own, &open)?;
        }
    }
    let every_ms = whole_number(
        ctx,
        "statistic_interval_secs",
        DEFAULT_STATISTIC_INTERVAL_SECS,
        0,
    )?
    .saturating_mul(1000);
    let last = own
        .get(STATISTIC_AT)?
        .and_then(|bytes| String::from_utf8(bytes).ok()?.parse::<u64>().ok());
    let due = last.is_none_or(|last| ctx.now_ms.saturating_sub(last) >= every_ms);
    if every_ms > 0
        && due
        && let Some(request) = D::statistic_query(ctx, settings)?
    {
        deliveries.push(Delivery {
            idempotency_key: format!("{STATISTIC_PREFIX}{}", ctx.now_ms),
            request,
        });
        own.set(STATISTIC_AT, ctx.now_ms.to_string().as_bytes())?;
    }
    Ok(Effects {
        events: Vec::new(),
        deliveries,
    })
}

/// `{"status": 0}` still waiting, `6` completed, `8` cancelled: the last two end the
/// activation as FINISH_ACTIVATION 3 and 4 would have.
pub fn on_status_answer(
    ctx: &CallContext,
    settings: &Settings,
    own: &dyn KeyValue,
    shared: &dyn KeyValue,
    activation_id: u64,
    outcome: &DeliveryOutcome,
) -> Result<Verdict, String> {
    let answer = match answers::read(outcome) {
        Answer::Json { http_status, body } if (200..300).contains(&http_status) => body,
        Answer::TransportError(_) => return Ok(Verdict::Retry),
        Answer::Json { http_status, .. } | Answer::Text { http_status, .. }
            if http_status >= 500 =>
        {
            return Ok(Verdict::Retry);
        }
        _ => {
            return Ok(Verdict::GiveUp(format!(
                "status of activation {activation_id}: unexpected answer {}",
                answers::describe(outcome, &settings.api_key)
            )));
        }
    };
    let code = match answer.get("status") {
        Some(Value::Number(number)) => number.as_u64(),
        Some(Value::String(text)) => text.trim().parse().ok(),
        _ => None,
    };
    let ending = match code {
        Some(0) => return Ok(Verdict::Delivered),
        Some(6) => Ending::Sold,
        Some(8) => Ending::Cancelled,
        _ => {
            return Ok(Verdict::GiveUp(format!(
                "status of activation {activation_id}: unknown answer {}",
                answers::describe(outcome, &settings.api_key)
            )));
        }
    };
    let closing = activation::close(
        own,
        shared,
        &ctx.instance,
        activation_id,
        ending,
        EndedBy::StatusQuery,
        ctx.now_ms,
    )?;
    if let Closing::Ended(_) = closing {
        eprintln!(
            "activation {activation_id} was {} on the marketplace without a FINISH_ACTIVATION reaching us; closed as status {}",
            if ending == Ending::Sold {
                "completed"
            } else {
                "cancelled"
            },
            ending.status()
        );
    }
    Ok(Verdict::Delivered)
}

/// `{"success": true, "total": N, …}`: logs a count of SIM cards that differs from ours.
pub fn on_statistic_answer(
    settings: &Settings,
    shared: &dyn KeyValue,
    outcome: &DeliveryOutcome,
) -> Result<Verdict, String> {
    let body = match answers::read(outcome) {
        Answer::Json { http_status, body } if (200..300).contains(&http_status) => body,
        Answer::TransportError(_) => return Ok(Verdict::Retry),
        _ => {
            return Ok(Verdict::GiveUp(format!(
                "SIM statistics: unexpected answer {}",
                answers::describe(outcome, &settings.api_key)
            )));
        }
    };
    let theirs = body.get("total").and_then(Value::as_u64).or_else(|| {
        body.get("data")
            .and_then(Value::as_array)
            .map(|data| data.len() as u64)
    });
    let (Some(theirs), false) = (theirs, body.get("success") == Some(&Value::Bool(false))) else {
        return Ok(Verdict::GiveUp(format!(
            "SIM statistics: no count in the answer {}",
            answers::describe(outcome, &settings.api_key)
        )));
    };
    let ours = inventory::on_sale(shared, settings)?.len() as u64;
    if theirs != ours {
        eprintln!("the marketplace counts {theirs} of our SIM cards; we have {ours} on sale");
    }
    Ok(Verdict::Delivered)
}
