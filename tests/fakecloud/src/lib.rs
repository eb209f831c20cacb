//! A fake Tencent Cloud for enisync's tests and demo.
