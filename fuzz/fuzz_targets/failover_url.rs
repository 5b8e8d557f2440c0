//! Fuzzes the failover URL parser: no input may panic it, an error must
//! point inside the input (on a character boundary) and render, and every
//! accepted URL must survive the `Display` round trip.
//!
//! Run from the repository root (new inputs go to the ignored `corpus/`,
//! the committed seeds are only read):
//!
//! ```text
//! cargo +nightly fuzz run failover_url fuzz/corpus/failover_url fuzz/seeds/failover_url
//! cargo +stable fuzz run -s none failover_url fuzz/corpus/failover_url fuzz/seeds/failover_url
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    match tandem_failover::parse(input) {
        Ok(url) => {
            let shown = url.to_string();
            match tandem_failover::parse(&shown) {
                Ok(again) => assert_eq!(again, url, "round trip changed {input:?} via {shown:?}"),
                Err(e) => panic!("display of {input:?} does not parse:\n{}", e.render(&shown)),
            }
        }
        Err(e) => {
            assert!(e.position <= input.len(), "{e:?} outside {input:?}");
            assert!(
                input.is_char_boundary(e.position),
                "{e:?} inside a character of {input:?}"
            );
            assert!(e.render(input).contains('^'));
        }
    }
});
