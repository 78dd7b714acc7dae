/*
 * kernels.c: choosing the kernel set once, at load, from what the CPU supports (never from
 * compile flags alone, so one build runs on any x86-64 or AArch64 machine).
 * RWKV_KERNELS=scalar|avx2|avx512|amx (x86-64) or scalar|neon|neon_dotprod (AArch64) forces a
 * path the CPU supports.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

extern const kernels kernels_avx2 __attribute__((weak));
extern const kernels kernels_avx512 __attribute__((weak));
extern const kernels kernels_amx __attribute__((weak));

/* What the CPU can run, read from CPUID and, for the wider registers, from XCR0: a CPU may
 * implement AVX or AVX-512 while the operating system does not save their registers on a
 * context switch, and then the instructions must not be used. (gcc's __builtin_cpu_supports
 * does not know every feature name in every version, and clang's knows fewer.) */
typedef struct cpu_features {
    bool avx2, avx512, amx;
} cpu_features;

static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static cpu_features detect_cpu(void) {
    cpu_features f = {false, false, false};
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
    if (!osxsave || !avx) return f;
    const uint64_t xcr0 = read_xcr0();
    const bool ymm_state = (xcr0 & 0x6) == 0x6;    /* SSE and AVX registers */
    const bool zmm_state = (xcr0 & 0xe0) == 0xe0;  /* opmask, upper ZMM0-15, ZMM16-31 */
    if (!ymm_state || __get_cpuid_max(0, NULL) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    const bool avx2 = b & (1u << 5);
    const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
    const bool avx512vbmi = c & (1u << 1), avx512vnni = c & (1u << 11);
    f.avx2 = avx2 && fma && f16c;
    f.avx512 = f.avx2 && zmm_state && avx512f && avx512dq && avx512bw && avx512vl && avx512vbmi && avx512vnni;
    const bool amx_bf16 = d & (1u << 22), amx_tile = d & (1u << 24), amx_int8 = d & (1u << 25);
    const bool tile_state = (xcr0 & 0x60000) == 0x60000; /* XTILECFG, XTILEDATA */
    __cpuid_count(7, 1, a, b, c, d);
    const bool avx512bf16 = a & (1u << 5);
    f.amx = f.avx512 && avx512bf16 && amx_bf16 && amx_int8 && amx_tile && tile_state;
    return f;
}

/* Linux (5.16 on) hands the tile registers' state only to a process that asks for it, once
 * for all its threads; other systems: not used. */
static bool os_grants_tiles(void) {
#if defined(__linux__) && defined(__x86_64__)
    enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
    return false;
#endif
}

static bool cpu_has_avx2(void) { return detect_cpu().avx2; }
static bool cpu_has_avx512(void) { return detect_cpu().avx512; }
static bool cpu_has_amx(void) { return detect_cpu().amx && os_grants_tiles(); }
#define HAVE_X86 1
#endif

#if defined(__aarch64__)
#if defined(__APPLE__)
#include <sys/sysctl.h>
#elif defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1ul << 20) /* the kernel's bit, for C libraries that do not name it */
#endif
#endif

extern const kernels kernels_neon __attribute__((weak));
extern const kernels kernels_neon_dotprod __attribute__((weak));

/* Advanced SIMD is part of every AArch64 CPU that runs a general-purpose OS; SDOT
 * (FEAT_DotProd) is optional before Armv8.4, so it is asked of the OS. */
static bool cpu_has_dotprod(void) {
#if defined(__ARM_FEATURE_DOTPROD)
    return true; /* the whole build may use SDOT already (Apple arm64: every chip has it) */
#elif defined(__APPLE__)
    int value = 0;
    size_t size = sizeof value;
    return sysctlbyname("hw.optional.arm.FEAT_DotProd", &value, &size, NULL, 0) == 0 && value != 0;
#elif defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
    return false; /* no way to ask: the baseline set */
#endif
}
#define HAVE_AARCH64 1
#endif

typedef struct candidate {
    const kernels * set;
    bool supported;
} candidate;

static int candidates(candidate * out) {
    int n = 0;
#ifdef HAVE_X86
    if (&kernels_amx) out[n++] = (candidate){&kernels_amx, cpu_has_amx()};
    if (&kernels_avx512) out[n++] = (candidate){&kernels_avx512, cpu_has_avx512()};
    if (&kernels_avx2) out[n++] = (candidate){&kernels_avx2, cpu_has_avx2()};
#endif
#ifdef HAVE_AARCH64
    if (&kernels_neon_dotprod) out[n++] = (candidate){&kernels_neon_dotprod, cpu_has_dotprod()};
    if (&kernels_neon) out[n++] = (candidate){&kernels_neon, true};
#endif
    out[n++] = (candidate){&kernels_scalar, true};
    return n;
}

const kernels * kernels_select(char * why, size_t why_len) {
    candidate list[5];
    int n = candidates(list);
    const char * forced = getenv("RWKV_KERNELS");
    if (why && why_len) why[0] = 0;
    if (forced && *forced) {
        for (int i = 0; i < n; i++) {
            if (strcmp(list[i].set->name, forced) == 0) {
                if (list[i].supported) return list[i].set;
                if (why) snprintf(why, why_len, "RWKV_KERNELS=%s is not supported by this CPU", forced);
                break;
            }
        }
        if (why && !why[0]) snprintf(why, why_len, "RWKV_KERNELS=%s is not a kernel path of this build", forced);
    }
    for (int i = 0; i < n; i++) {
        if (list[i].supported) return list[i].set;
    }
    return &kernels_scalar;
}

const char * kernels_available(void) {
    static char text[64];
    candidate list[5];
    int n = candidates(list);
    text[0] = 0;
    for (int i = n - 1; i >= 0; i--) {
        if (!list[i].supported) continue;
        if (text[0]) strncat(text, " ", sizeof text - strlen(text) - 1);
        strncat(text, list[i].set->name, sizeof text - strlen(text) - 1);
    }
    return text;
}
