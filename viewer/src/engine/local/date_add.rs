//! Athena's (Trino's) `date_add(unit, value, timestamp)`, so that the original demo's query —
//! `WHERE from_unixtime(window_end / 1000) >= date_add('hour', -1, current_timestamp)` — runs
//! on the local engine as written. DataFusion has no function of that name and shape.

use datafusion::arrow::compute::kernels::numeric::add;
use datafusion::arrow::datatypes::{DataType, IntervalMonthDayNano};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TrinoDateAdd {
    signature: Signature,
}

impl TrinoDateAdd {
    pub fn new() -> TrinoDateAdd {
        TrinoDateAdd {
            signature: Signature::any(3, Volatility::Immutable),
        }
    }
}

/// `value` units as an interval; Trino's unit names.
fn interval(unit: &str, value: i64) -> Option<IntervalMonthDayNano> {
    let nanos = |per_unit: i64| value.checked_mul(per_unit);
    let months = |per_unit: i32| {
        i32::try_from(value)
            .ok()
            .and_then(|v| v.checked_mul(per_unit))
    };
    let days = |per_unit: i32| {
        i32::try_from(value)
            .ok()
            .and_then(|v| v.checked_mul(per_unit))
    };
    Some(match unit.to_ascii_lowercase().as_str() {
        "millisecond" => IntervalMonthDayNano::new(0, 0, nanos(1_000_000)?),
        "second" => IntervalMonthDayNano::new(0, 0, nanos(1_000_000_000)?),
        "minute" => IntervalMonthDayNano::new(0, 0, nanos(60_000_000_000)?),
        "hour" => IntervalMonthDayNano::new(0, 0, nanos(3_600_000_000_000)?),
        "day" => IntervalMonthDayNano::new(0, days(1)?, 0),
        "week" => IntervalMonthDayNano::new(0, days(7)?, 0),
        "month" => IntervalMonthDayNano::new(months(1)?, 0, 0),
        "quarter" => IntervalMonthDayNano::new(months(3)?, 0, 0),
        "year" => IntervalMonthDayNano::new(months(12)?, 0, 0),
        _ => return None,
    })
}

fn constant_text(value: &ColumnarValue) -> Option<&str> {
    match value {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(text))
            | ScalarValue::Utf8View(Some(text))
            | ScalarValue::LargeUtf8(Some(text)),
        ) => Some(text),
        _ => None,
    }
}

fn constant_integer(value: &ColumnarValue) -> Option<i64> {
    match value {
        ColumnarValue::Scalar(scalar) => match scalar.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(Some(number)) => Some(number),
            _ => None,
        },
        ColumnarValue::Array(_) => None,
    }
}

impl ScalarUDFImpl for TrinoDateAdd {
    fn name(&self) -> &str {
        "date_add"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [_, _, timestamp @ DataType::Timestamp(..)] => Ok(timestamp.clone()),
            _ => plan_err!(
                "date_add(unit, value, timestamp) takes a unit name, an integer and a timestamp; got {arg_types:?}"
            ),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [unit, value, timestamp] = args.args.as_slice() else {
            return exec_err!("date_add takes three arguments");
        };
        let Some(unit) = constant_text(unit) else {
            return exec_err!("date_add: the unit must be a constant such as 'hour'");
        };
        let Some(value) = constant_integer(value) else {
            return exec_err!("date_add: the value must be a constant integer");
        };
        let Some(step) = interval(unit, value) else {
            return exec_err!(
                "date_add: unknown unit {unit:?} or value out of range (units: millisecond, second, minute, hour, day, week, month, quarter, year)"
            );
        };
        let step = ScalarValue::IntervalMonthDayNano(Some(step)).to_scalar()?;
        match timestamp {
            ColumnarValue::Array(array) => Ok(ColumnarValue::Array(add(array, &step)?)),
            ColumnarValue::Scalar(scalar) => {
                let sum = add(&scalar.to_scalar()?, &step)?;
                Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&sum, 0)?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trino_units() {
        assert_eq!(
            interval("hour", -1),
            Some(IntervalMonthDayNano::new(0, 0, -3_600_000_000_000))
        );
        assert_eq!(
            interval("MINUTE", -30),
            Some(IntervalMonthDayNano::new(0, 0, -1_800_000_000_000))
        );
        assert_eq!(
            interval("quarter", 2),
            Some(IntervalMonthDayNano::new(6, 0, 0))
        );
        assert_eq!(interval("fortnight", 1), None);
        assert_eq!(interval("hour", i64::MAX), None);
        assert_eq!(interval("day", i64::from(i32::MAX) + 1), None);
    }
}
