// Registers modulated_ffi.cc's XLA FFI handlers with the XLA inside TensorFlow (its
// `XLA_FFI_GetApi`, exported by libtensorflow_framework.so.2) for the CPU ("Host"),
// when the library is loaded: `hebbkeras/kernels/xla_native.py` builds both files
// into one library, and `xla_modfused` calls the handlers from StableHLO custom
// calls (api_version 4) in `XlaCallModule` ops, inside TensorFlow's XLA clusters.

#include "xla/ffi/api/c_api.h"
#include "xla/ffi/api/ffi.h"

extern "C" {
XLA_FFI_Error* HebbkerasModulatedUpdate(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* HebbkerasModulatedBackward(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* HebbkerasModulatedChunk(XLA_FFI_CallFrame* call_frame);
}

XLA_FFI_REGISTER_HANDLER(XLA_FFI_GetApi(), "hebbkeras_modulated_update", "Host",
                         HebbkerasModulatedUpdate);
XLA_FFI_REGISTER_HANDLER(XLA_FFI_GetApi(), "hebbkeras_modulated_backward", "Host",
                         HebbkerasModulatedBackward);
XLA_FFI_REGISTER_HANDLER(XLA_FFI_GetApi(), "hebbkeras_modulated_chunk", "Host",
                         HebbkerasModulatedChunk);
