//! Finding a function's RET instructions, where mapscope places its "function returned"
//! probes: a uretprobe rewrites the return address on the stack, which Go's stack copying
//! and traceback cannot survive, so returns are observed at the instructions themselves.
use iced_x86::{Decoder, DecoderOptions, Mnemonic};

/// Virtual addresses of every near RET in `code`, which starts at `address`.
pub fn ret_sites(code: &[u8], address: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut sites = Vec::new();
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.mnemonic() == Mnemonic::Ret {
            sites.push(instruction.ip());
        }
    }
    sites
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_ret_and_not_ret_bytes_inside_other_instructions() {
        // mov eax, 0xc3c3c3c3 ; ret ; add rsp, 8 ; ret 8 ; int3
        let code = [
            0xb8, 0xc3, 0xc3, 0xc3, 0xc3, // mov eax, imm32 holding C3 bytes
            0xc3, // ret
            0x48, 0x83, 0xc4, 0x08, // add rsp, 8
            0xc2, 0x08, 0x00, // ret 8
            0xcc, // int3 padding
        ];
        assert_eq!(ret_sites(&code, 0x1000), vec![0x1005, 0x100a]);
    }

    #[test]
    fn empty_and_garbage_input_yield_no_sites() {
        assert!(ret_sites(&[], 0).is_empty());
        assert!(ret_sites(&[0x0f, 0xff, 0xff], 0).is_empty());
    }
}
