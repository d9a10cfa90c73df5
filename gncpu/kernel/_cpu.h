/* Which instruction-set level the running CPU (and OS) supports, so the
 * dispatcher in gncpu/kernel/__init__.py can import the best compiled variant.
 * 0 = baseline, 1 = x86-64-v3 (AVX2, FMA), 2 = x86-64-v4 (AVX-512 F/BW/CD/DQ/VL). */
#ifndef GNCPU_CPU_H
#define GNCPU_CPU_H

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
static int gncpu_cpu_level(void) {
    __builtin_cpu_init();
    int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("bmi2");
    int v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vl");
    return v4 ? 2 : (v3 ? 1 : 0);
}
#else
static int gncpu_cpu_level(void) { return 0; }
#endif

#ifndef GNCPU_VARIANT
#define GNCPU_VARIANT "baseline"
#endif
#ifndef GNCPU_CFLAGS
#define GNCPU_CFLAGS ""
#endif
#if defined(__clang__)
#define GNCPU_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define GNCPU_COMPILER "gcc " __VERSION__
#elif defined(_MSC_VER)
#define GNCPU_COMPILER "msvc"
#else
#define GNCPU_COMPILER "unknown"
#endif

#endif
