//! GET_SERVICES: how many numbers this instance can sell now, per country, operator and
//! service. Marketplaces block partners that report numbers they cannot deliver, so a number
//! counts for a service only if GET_NUMBER would give it out for that service now.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use simrelay_sdk::KeyValue;

use crate::inventory::{self, ANY_OPERATOR};
use crate::settings::Settings;

/// country → operator → service → count.
pub type Counts = BTreeMap<String, BTreeMap<String, BTreeMap<String, u32>>>;

/// The counts for every service the instance sells. Every operator with a card on sale is
/// listed, with zeros for services none of its numbers can take now.
pub fn counts(shared: &dyn KeyValue, settings: &Settings) -> Result<Counts, String> {
    let mut counts = Counts::new();
    for sale in inventory::on_sale(shared, settings)? {
        let services = counts
            .entry(sale.country.clone())
            .or_default()
            .entry(sale.operator.clone())
            .or_insert_with(|| {
                settings
                    .services
                    .keys()
                    .map(|code| (code.clone(), 0))
                    .collect()
            });
        for (code, count) in services.iter_mut() {
            if sale
                .usage
                .unavailable(&sale.number, code, settings.offer_cap)
                .is_none()
            {
                *count += 1;
            }
        }
    }
    Ok(counts)
}

/// Adds the `any` operator with each country's totals, as Onlinesim's form has it. Cards of
/// no named operator already sit under `any`: they are part of the total, not added twice.
pub fn with_any_totals(mut counts: Counts) -> Counts {
    for operators in counts.values_mut() {
        let mut totals: BTreeMap<String, u32> = BTreeMap::new();
        for services in operators.values() {
            for (code, count) in services {
                *totals.entry(code.clone()).or_default() += count;
            }
        }
        operators.insert(ANY_OPERATOR.to_owned(), totals);
    }
    counts
}

/// The answer: `{"countryList": [{"country", "operatorMap": {…}}], "status": "SUCCESS"}`.
pub fn answer(counts: &Counts) -> Value {
    let countries: Vec<Value> = counts
        .iter()
        .map(|(country, operators)| json!({ "country": country, "operatorMap": operators }))
        .collect();
    json!({ "countryList": countries, "status": "SUCCESS" })
}
