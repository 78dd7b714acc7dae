/* forward_stub.c: placeholders for architectures not yet implemented (replaced file by file). */
#include "engine.h"

static int unsupported_bind(model * m, error_slot * err) {
    error_set(err, RWKV_ERROR_MODEL | RWKV_ERROR_UNSUPPORTED, "RWKV architecture v%s is not supported by this engine yet", m->ops->version);
    return -1;
}
static size_t zero_len(const model * m) { return 0; }
static void no_init(const model * m, float * state) {}
static void no_forward(context * ctx, const uint32_t * tokens, int T, float * state, float * logits) {}

#define STUB(name, id, ver) \
    const arch_ops name = {.arch = id, .version = ver, .bind = unsupported_bind, .forward = no_forward, \
                           .state_len = zero_len, .init_state = no_init, .scratch_per_token = zero_len};
STUB(arch_v6, ARCH_V6, "6")
