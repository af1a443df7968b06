//! Country and operator of a SIM from its IMSI: the first three digits are the MCC (the
//! country), the next two or three the MNC (the operator).
//!
//! Names follow the SMSHub-family marketplaces (SmsBower, Onlinesim): lower case, no spaces,
//! `england` for the United Kingdom. The table covers the common operators; the `mcc_mnc`
//! setting adds or renames codes, and the `sims` setting can name a SIM's country and
//! operator outright.

use crate::settings::CodeOverrides;

/// Country names by MCC.
const COUNTRIES: &[(&str, &str)] = &[
    ("202", "greece"),
    ("204", "netherlands"),
    ("206", "belgium"),
    ("208", "france"),
    ("214", "spain"),
    ("216", "hungary"),
    ("218", "bosnia"),
    ("219", "croatia"),
    ("220", "serbia"),
    ("222", "italy"),
    ("226", "romania"),
    ("228", "switzerland"),
    ("230", "czech"),
    ("231", "slovakia"),
    ("232", "austria"),
    ("234", "england"),
    ("235", "england"),
    ("238", "denmark"),
    ("240", "sweden"),
    ("242", "norway"),
    ("244", "finland"),
    ("246", "lithuania"),
    ("247", "latvia"),
    ("248", "estonia"),
    ("250", "russia"),
    ("255", "ukraine"),
    ("257", "belarus"),
    ("259", "moldova"),
    ("260", "poland"),
    ("262", "germany"),
    ("268", "portugal"),
    ("270", "luxembourg"),
    ("272", "ireland"),
    ("274", "iceland"),
    ("276", "albania"),
    ("280", "cyprus"),
    ("282", "georgia"),
    ("283", "armenia"),
    ("284", "bulgaria"),
    ("286", "turkey"),
    ("293", "slovenia"),
    ("294", "northmacedonia"),
    ("297", "montenegro"),
    ("302", "canada"),
    ("310", "usa"),
    ("311", "usa"),
    ("312", "usa"),
    ("313", "usa"),
    ("314", "usa"),
    ("315", "usa"),
    ("316", "usa"),
    ("334", "mexico"),
    ("400", "azerbaijan"),
    ("401", "kazakhstan"),
    ("404", "india"),
    ("405", "india"),
    ("410", "pakistan"),
    ("413", "srilanka"),
    ("414", "myanmar"),
    ("415", "lebanon"),
    ("416", "jordan"),
    ("418", "iraq"),
    ("420", "saudiarabia"),
    ("424", "uae"),
    ("425", "israel"),
    ("428", "mongolia"),
    ("429", "nepal"),
    ("432", "iran"),
    ("434", "uzbekistan"),
    ("436", "tajikistan"),
    ("437", "kyrgyzstan"),
    ("438", "turkmenistan"),
    ("440", "japan"),
    ("450", "southkorea"),
    ("452", "vietnam"),
    ("454", "hongkong"),
    ("455", "macau"),
    ("456", "cambodia"),
    ("457", "laos"),
    ("460", "china"),
    ("466", "taiwan"),
    ("470", "bangladesh"),
    ("502", "malaysia"),
    ("505", "australia"),
    ("510", "indonesia"),
    ("515", "philippines"),
    ("520", "thailand"),
    ("525", "singapore"),
    ("530", "newzealand"),
    ("602", "egypt"),
    ("603", "algeria"),
    ("604", "morocco"),
    ("605", "tunisia"),
    ("608", "senegal"),
    ("612", "ivory"),
    ("620", "ghana"),
    ("621", "nigeria"),
    ("636", "ethiopia"),
    ("639", "kenya"),
    ("640", "tanzania"),
    ("641", "uganda"),
    ("655", "southafrica"),
    ("704", "guatemala"),
    ("710", "nicaragua"),
    ("712", "costarica"),
    ("714", "panama"),
    ("716", "peru"),
    ("722", "argentina"),
    ("724", "brazil"),
    ("730", "chile"),
    ("732", "colombia"),
    ("734", "venezuela"),
    ("736", "bolivia"),
    ("740", "ecuador"),
    ("744", "paraguay"),
    ("748", "uruguay"),
];

/// Operator names by MCC+MNC.
const OPERATORS: &[(&str, &str)] = &[
    // Russia
    ("25001", "mts"),
    ("25002", "megafon"),
    ("25011", "yota"),
    ("25020", "tele2"),
    ("25028", "beeline"),
    ("25035", "motiv"),
    ("25039", "rostelecom"),
    ("25050", "sber"),
    ("25062", "tinkoff"),
    ("25099", "beeline"),
    // Ukraine
    ("25501", "vodafone"),
    ("25503", "kyivstar"),
    ("25506", "life"),
    ("25507", "3mob"),
    // Belarus
    ("25701", "a1"),
    ("25702", "mts"),
    ("25704", "life"),
    // Kazakhstan
    ("40101", "beeline"),
    ("40102", "kcell"),
    ("40107", "altel"),
    ("40177", "tele2"),
    // Uzbekistan
    ("43404", "beeline"),
    ("43405", "ucell"),
    ("43407", "mobiuz"),
    ("43408", "uzmobile"),
    // Kyrgyzstan
    ("43701", "beeline"),
    ("43705", "megacom"),
    ("43709", "o"),
    // United Kingdom
    ("23410", "o2"),
    ("23415", "vodafone"),
    ("23420", "three"),
    ("23430", "ee"),
    ("23433", "ee"),
    // Germany
    ("26201", "telekom"),
    ("26202", "vodafone"),
    ("26203", "o2"),
    // France
    ("20801", "orange"),
    ("20810", "sfr"),
    ("20815", "free"),
    ("20820", "bouygues"),
    // Poland
    ("26001", "plus"),
    ("26002", "tmobile"),
    ("26003", "orange"),
    ("26006", "play"),
    // Netherlands
    ("20404", "vodafone"),
    ("20408", "kpn"),
    ("20416", "tmobile"),
    // Spain
    ("21401", "vodafone"),
    ("21403", "orange"),
    ("21407", "movistar"),
    // Italy
    ("22201", "tim"),
    ("22210", "vodafone"),
    ("22288", "windtre"),
    // United States
    ("310260", "tmobile"),
    ("310410", "att"),
    ("311480", "verizon"),
    // Indonesia
    ("51001", "indosat"),
    ("51010", "telkomsel"),
    ("51011", "xl"),
    ("51089", "three"),
    // Philippines
    ("51502", "globe"),
    ("51503", "smart"),
    // Brazil
    ("72402", "tim"),
    ("72403", "tim"),
    ("72404", "tim"),
    ("72405", "claro"),
    ("72406", "vivo"),
    ("72410", "vivo"),
    ("72411", "vivo"),
    ("72423", "vivo"),
    ("72431", "oi"),
];

/// Where a SIM is sold: its country, and its operator when the code names one.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub country: String,
    pub operator: Option<String>,
}

/// The network an IMSI belongs to, the configuration's names first, then the table's.
/// `None` when the country is not known: a SIM is not offered in a country nobody named.
pub fn network(imsi: &str, overrides: &CodeOverrides) -> Option<Network> {
    let imsi = imsi.trim();
    if imsi.len() < 5 || !imsi.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mcc = &imsi[..3];
    // Three-digit MNCs (North America, parts of India and Latin America) are tried first:
    // the codes of one country are either all two or all three digits long in the tables,
    // so the longer match is never a false one.
    let codes = [imsi.get(..6), imsi.get(..5)];
    let configured = codes
        .iter()
        .flatten()
        .find_map(|code| overrides.networks.get(*code));
    let built_in = || {
        codes
            .iter()
            .flatten()
            .find_map(|code| lookup(OPERATORS, code))
    };
    let country = configured
        .and_then(|name| name.country.clone())
        .or_else(|| overrides.countries.get(mcc).cloned())
        .or_else(|| lookup(COUNTRIES, mcc).map(str::to_owned))?;
    let operator = configured
        .map(|name| name.operator.clone())
        .or_else(|| built_in().map(str::to_owned));
    Some(Network { country, operator })
}

/// A linear scan: the tables stay grouped by country for people to read, and a hundred
/// comparisons per SIM cost nothing next to reading the SIM.
fn lookup(table: &'static [(&'static str, &'static str)], code: &str) -> Option<&'static str> {
    table
        .iter()
        .find(|(key, _)| *key == code)
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::NetworkName;

    fn network_of(imsi: &str) -> Option<(String, Option<String>)> {
        network(imsi, &CodeOverrides::default()).map(|n| (n.country, n.operator))
    }

    fn named(country: &str, operator: &str) -> Option<(String, Option<String>)> {
        Some((country.into(), Some(operator.into())))
    }

    #[test]
    fn tables_have_each_code_once() {
        for table in [COUNTRIES, OPERATORS] {
            let mut codes: Vec<_> = table.iter().map(|(code, _)| *code).collect();
            codes.sort_unstable();
            let before = codes.len();
            codes.dedup();
            assert_eq!(codes.len(), before);
        }
        // Every operator's MCC has a country.
        for (code, _) in OPERATORS {
            assert!(lookup(COUNTRIES, &code[..3]).is_some(), "{code}");
        }
    }

    #[test]
    fn common_operators() {
        assert_eq!(network_of("250010000000001"), named("russia", "mts"));
        assert_eq!(network_of("250020000000001"), named("russia", "megafon"));
        assert_eq!(network_of("250990000000001"), named("russia", "beeline"));
        assert_eq!(network_of("250200000000001"), named("russia", "tele2"));
        assert_eq!(network_of("255060000000001"), named("ukraine", "life"));
        assert_eq!(network_of("234150000000001"), named("england", "vodafone"));
        assert_eq!(network_of("401770000000001"), named("kazakhstan", "tele2"));
    }

    #[test]
    fn three_digit_mncs() {
        assert_eq!(network_of("310260123456789"), named("usa", "tmobile"));
        assert_eq!(network_of("311480123456789"), named("usa", "verizon"));
        // 310-26 would be a different (unlisted) two-digit code: the three-digit one wins.
        assert_eq!(network_of("310410000000000"), named("usa", "att"));
    }

    #[test]
    fn known_country_unknown_operator() {
        assert_eq!(network_of("250770000000001"), Some(("russia".into(), None)));
    }

    #[test]
    fn unknown_or_malformed() {
        for imsi in ["999990000000000", "", "2500", "25001abc", " "] {
            assert_eq!(network_of(imsi), None, "{imsi:?}");
        }
    }

    #[test]
    fn configuration_wins() {
        let mut overrides = CodeOverrides::default();
        overrides.countries.insert("250".into(), "rf".into());
        overrides.countries.insert("999".into(), "testland".into());
        overrides.networks.insert(
            "25001".into(),
            NetworkName {
                country: None,
                operator: "mts-rus".into(),
            },
        );
        overrides.networks.insert(
            "25077".into(),
            NetworkName {
                country: Some("crimea".into()),
                operator: "volna".into(),
            },
        );
        let of = |imsi: &str| network(imsi, &overrides).map(|n| (n.country, n.operator));
        assert_eq!(of("250010000000001"), named("rf", "mts-rus"));
        assert_eq!(of("250020000000001"), named("rf", "megafon"));
        assert_eq!(of("250770000000001"), named("crimea", "volna"));
        assert_eq!(of("999010000000001"), Some(("testland".into(), None)));
    }
}
