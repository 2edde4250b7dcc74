//! Realistic synthetic clicks in the original demo's format.
//!
//! Several pages, each with its own hot spots (buttons, navigation, forms) plus background noise;
//! several device viewports and pixel ratios; real-looking user agents (so records have the demo's
//! size, about 320 bytes); event times that mostly advance but arrive a little out of order, a few
//! that are minutes late, and a share of invalid records of every kind. Deterministic for a seed,
//! so tests can compute the expected result independently of the aggregator.

use std::io::Write;

use crate::event::RejectReason;
use crate::time::iso8601;

/// A small, fast, deterministic generator (SplitMix64); statistical quality is plenty here.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// A hot spot: centre and spread as fractions of the viewport, and its share of the page's clicks.
struct HotSpot {
    x: f64,
    y: f64,
    spread_x: f64,
    spread_y: f64,
    weight: f64,
}

const fn spot(x: f64, y: f64, spread_x: f64, spread_y: f64, weight: f64) -> HotSpot {
    HotSpot {
        x,
        y,
        spread_x,
        spread_y,
        weight,
    }
}

struct Page {
    id: &'static str,
    /// Share of all clicks.
    traffic: f64,
    spots: &'static [HotSpot],
}

const PAGES: [Page; 4] = [
    Page {
        id: "home",
        traffic: 0.45,
        spots: &[
            spot(0.50, 0.46, 0.06, 0.03, 0.40),  // hero call to action
            spot(0.88, 0.05, 0.03, 0.015, 0.20), // sign-up in the header
            spot(0.30, 0.05, 0.14, 0.012, 0.15), // navigation links
            spot(0.25, 0.80, 0.05, 0.04, 0.08),  // feature card
            spot(0.75, 0.80, 0.05, 0.04, 0.07),  // feature card
        ],
    },
    Page {
        id: "pricing",
        traffic: 0.25,
        spots: &[
            spot(0.25, 0.72, 0.04, 0.02, 0.20),
            spot(0.50, 0.72, 0.04, 0.02, 0.45), // the recommended plan
            spot(0.75, 0.72, 0.04, 0.02, 0.15),
            spot(0.50, 0.92, 0.10, 0.02, 0.10), // FAQ toggles
        ],
    },
    Page {
        id: "docs",
        traffic: 0.20,
        spots: &[
            spot(0.10, 0.45, 0.04, 0.22, 0.50),  // sidebar
            spot(0.55, 0.07, 0.12, 0.015, 0.30), // search box
            spot(0.90, 0.30, 0.03, 0.10, 0.10),  // table of contents
        ],
    },
    Page {
        id: "checkout",
        traffic: 0.10,
        spots: &[
            spot(0.35, 0.40, 0.12, 0.12, 0.45), // form fields
            spot(0.72, 0.86, 0.05, 0.02, 0.45), // pay button
        ],
    },
];

/// Share of a page's clicks that land anywhere.
const BACKGROUND_SHARE: f64 = 0.10;

/// Device viewports in CSS pixels, with their pixel ratios.
const VIEWPORTS: [(u32, u32, f64); 6] = [
    (1920, 1080, 1.0),
    (1366, 768, 1.0),
    (1440, 900, 2.0),
    (390, 844, 3.0),
    (412, 915, 2.625),
    (768, 1024, 2.0),
];

const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36",
];

/// A valid click, as a browser would report it.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthClick {
    pub page_id: &'static str,
    pub event_time_ms: i64,
    pub x: f64,
    pub y: f64,
    pub viewport_width: u32,
    pub viewport_height: u32,
    pub dpr: f64,
    pub user_agent: &'static str,
}

impl SynthClick {
    /// The demo's JSON for this click (one line, no newline).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            r#"{{"event_type":"click","event_time":"{}","event_time_ms":{},"page_id":"{}","x":{:.1},"y":{:.1},"viewport_width":{},"viewport_height":{},"dpr":{},"user_agent":"{}"}}"#,
            iso8601(self.event_time_ms),
            self.event_time_ms,
            self.page_id,
            self.x,
            self.y,
            self.viewport_width,
            self.viewport_height,
            self.dpr,
            self.user_agent,
        );
    }

    /// x and y exactly as they appear in the JSON (rounded to 0.1 px).
    pub fn json_coordinates(&self) -> (f64, f64) {
        let round = |v: f64| -> f64 { format!("{v:.1}").parse().unwrap_or(v) };
        (round(self.x), round(self.y))
    }
}

/// One generated record.
#[derive(Clone, Debug, PartialEq)]
pub enum SynthRecord {
    Click(SynthClick),
    /// An invalid record and the reason the aggregator must give for it.
    Invalid {
        json: String,
        reason: RejectReason,
    },
}

impl SynthRecord {
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            SynthRecord::Click(click) => click.write_json(out),
            SynthRecord::Invalid { json, .. } => out.extend_from_slice(json.as_bytes()),
        }
    }
}

/// Knobs of the generator.
#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub seed: u64,
    /// Event time of the first click.
    pub start_ms: i64,
    /// Average clicks per second of event time.
    pub clicks_per_second: f64,
    /// Arrival jitter: a click's time may be up to this much behind the newest one.
    pub out_of_order_ms: i64,
    /// Share of clicks that arrive minutes late.
    pub late_share: f64,
    /// Share of records that are invalid.
    pub invalid_share: f64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            seed: 1,
            start_ms: 1_766_919_000_000,
            clicks_per_second: 200.0,
            out_of_order_ms: 5_000,
            late_share: 0.002,
            invalid_share: 0.01,
        }
    }
}

/// An endless stream of records.
pub struct Generator {
    rng: Rng,
    options: SynthOptions,
    clock_ms: f64,
}

impl Generator {
    pub fn new(options: SynthOptions) -> Self {
        Generator {
            rng: Rng::new(options.seed),
            clock_ms: options.start_ms as f64,
            options,
        }
    }

    /// The newest event time handed out so far.
    pub fn clock_ms(&self) -> i64 {
        self.clock_ms as i64
    }

    pub fn click(&mut self) -> SynthClick {
        let rng = &mut self.rng;
        // Exponential gaps make a Poisson arrival process.
        let mean_gap = 1000.0 / self.options.clicks_per_second.max(1e-3);
        self.clock_ms += -mean_gap * (1.0 - rng.unit()).ln();
        let mut event_time_ms = self.clock_ms as i64;
        if rng.unit() < self.options.late_share {
            event_time_ms -= 120_000 + rng.below(480_000) as i64;
        } else if self.options.out_of_order_ms > 0 {
            event_time_ms -= rng.below(self.options.out_of_order_ms as usize) as i64;
        }
        let page = pick(rng, &PAGES, |p| p.traffic);
        let (viewport_width, viewport_height, dpr) = VIEWPORTS[rng.below(VIEWPORTS.len())];
        let (fx, fy) = if rng.unit() < BACKGROUND_SHARE {
            (rng.unit(), rng.unit())
        } else {
            let spot = pick(rng, page.spots, |s| s.weight);
            (
                spot.x + spot.spread_x * rng.normal(),
                spot.y + spot.spread_y * rng.normal(),
            )
        };
        let width = f64::from(viewport_width);
        let height = f64::from(viewport_height);
        SynthClick {
            page_id: page.id,
            event_time_ms: event_time_ms.max(0),
            x: (fx * width).clamp(0.0, width - 0.1),
            y: (fy * height).clamp(0.0, height - 0.1),
            viewport_width,
            viewport_height,
            dpr,
            user_agent: USER_AGENTS[rng.below(USER_AGENTS.len())],
        }
    }

    fn invalid(&mut self) -> SynthRecord {
        let click = self.click();
        let mut valid = Vec::new();
        click.write_json(&mut valid);
        let valid = String::from_utf8_lossy(&valid).into_owned();
        let (json, reason) = match self.rng.below(7) {
            0 => (
                valid[..valid.len() / 2].to_owned(),
                RejectReason::MalformedJson,
            ),
            1 => (
                valid.replacen(r#""event_type":"click""#, r#""event_type":"scroll""#, 1),
                RejectReason::NotAClick,
            ),
            2 => (
                valid.replacen(r#""x":"#, r#""x_pos":"#, 1),
                RejectReason::MissingField,
            ),
            3 => (
                valid.replacen(r#""page_id":"#, r#""page_id":42,"was":"#, 1),
                RejectReason::WrongType,
            ),
            4 => (
                valid.replacen(
                    &format!(r#""viewport_width":{}"#, click.viewport_width),
                    r#""viewport_width":0"#,
                    1,
                ),
                RejectReason::NonPositiveViewport,
            ),
            5 => (
                valid.replacen(
                    &format!(r#""page_id":"{}""#, click.page_id),
                    r#""page_id":"""#,
                    1,
                ),
                RejectReason::EmptyPageId,
            ),
            _ => (
                valid.replacen(
                    &format!(r#""event_time_ms":{}"#, click.event_time_ms),
                    r#""event_time_ms":-5"#,
                    1,
                ),
                RejectReason::OutOfRange,
            ),
        };
        SynthRecord::Invalid { json, reason }
    }
}

impl Iterator for Generator {
    type Item = SynthRecord;

    fn next(&mut self) -> Option<SynthRecord> {
        Some(if self.rng.unit() < self.options.invalid_share {
            self.invalid()
        } else {
            SynthRecord::Click(self.click())
        })
    }
}

fn pick<'t, T>(rng: &mut Rng, items: &'t [T], weight: impl Fn(&T) -> f64) -> &'t T {
    let total: f64 = items.iter().map(&weight).sum();
    let mut target = rng.unit() * total;
    for item in items {
        target -= weight(item);
        if target < 0.0 {
            return item;
        }
    }
    &items[items.len() - 1]
}

/// The ids of the generated pages.
pub fn page_ids() -> impl Iterator<Item = &'static str> {
    PAGES.iter().map(|page| page.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Aggregator;
    use clickheatmap_crds::AggregatorConfig;

    #[test]
    fn records_look_like_the_demo_and_parse() {
        let mut generator = Generator::new(SynthOptions {
            invalid_share: 0.0,
            ..SynthOptions::default()
        });
        let mut sizes = 0usize;
        let mut aggregator = Aggregator::new(&AggregatorConfig::default(), false);
        aggregator.set_clock(SynthOptions::default().start_ms);
        for record in generator.by_ref().take(1000) {
            let mut json = Vec::new();
            record.write_json(&mut json);
            sizes += json.len();
            aggregator.process_record(0, &json);
        }
        let average = sizes / 1000;
        assert!(
            (280..=360).contains(&average),
            "average record size {average}"
        );
        let counters = aggregator.counters();
        assert_eq!(counters.clicks, 1000, "{counters:?}");
    }

    #[test]
    fn invalid_records_carry_the_reason_the_parser_gives() {
        let mut generator = Generator::new(SynthOptions {
            invalid_share: 1.0,
            ..SynthOptions::default()
        });
        for record in generator.by_ref().take(500) {
            let SynthRecord::Invalid { json, reason } = record else {
                panic!("expected an invalid record");
            };
            let mut aggregator = Aggregator::new(&AggregatorConfig::default(), false);
            aggregator.process_record(0, json.as_bytes());
            let counters = aggregator.counters();
            assert_eq!(counters.rejected[reason.index()], 1, "{reason:?}: {json}");
            assert_eq!(counters.rejected_total(), 1, "{json}");
        }
    }

    #[test]
    fn deterministic_for_a_seed() {
        let a: Vec<_> = Generator::new(SynthOptions::default()).take(50).collect();
        let b: Vec<_> = Generator::new(SynthOptions::default()).take(50).collect();
        assert_eq!(a, b);
    }
}
