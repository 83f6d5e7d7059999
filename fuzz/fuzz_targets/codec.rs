//! The record codec alone (`idemstore::codec_probe`, feature `test-util`): arbitrary bytes
//! never panic the decoder, and what decodes re-encodes to the same record (`Bytes`, with the
//! version byte and checksum made valid when `reseal`, so the damage reaches bincode); every
//! structured record round-trips byte-exact, and its truncations, an appended byte and a
//! flipped bit are refused as corrupt (`Record`); arbitrary bytes never panic the directory
//! snapshot's parser, and a section that parses re-encodes to its bytes (`Snapshot`). The
//! `file` target plants such records in a store file and opens it.

#![no_main]

use arbitrary::Arbitrary;
use idemstore::Response;
use idemstore::codec_probe::{self, Parts};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input {
    Bytes {
        data: Vec<u8>,
        reseal: bool,
    },
    Record {
        scope: Vec<u8>,
        key: Vec<u8>,
        expires_at: u64,
        fingerprint: Option<u128>,
        token: u64,
        attempt: u32,
        in_flight: Option<(u64, u32)>,
        response: Option<(u16, Vec<(String, Vec<u8>)>, Vec<u8>)>,
        flip: (usize, u8),
    },
    Snapshot {
        data: Vec<u8>,
        reseal: bool,
    },
}

fuzz_target!(|input: Input| match input {
    Input::Bytes {
        mut data,
        reseal: seal,
    } => {
        if seal {
            codec_probe::reseal(&mut data);
        }
        codec_probe::decode_any(&data);
    }
    Input::Record {
        scope,
        key,
        expires_at,
        fingerprint,
        token,
        attempt,
        in_flight,
        response,
        flip,
    } => codec_probe::round_trip(
        Parts {
            scope,
            key,
            expires_at,
            fingerprint,
            token,
            attempt,
            in_flight,
            response: response.map(|(status, headers, body)| Response {
                status,
                headers,
                body,
            }),
        },
        flip,
    ),
    Input::Snapshot { mut data, reseal } => {
        codec_probe::snapshot_any(&mut data, reseal);
    }
});
