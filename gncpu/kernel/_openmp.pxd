# The one OpenMP shim: every OpenMP call in gncpu is cimported from here, so a
# build without OpenMP (e.g. Apple clang without libomp) still compiles and
# runs serially.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define GNCPU_HAVE_OPENMP 1
    /* An orphaned barrier: binds to the enclosing parallel region, and is a
       no-op when called outside one (a team of one thread). */
    static inline void gncpu_barrier(void) {
        #pragma omp barrier
    }
    #else
    #define GNCPU_HAVE_OPENMP 0
    static inline int omp_get_max_threads(void) { return 1; }
    static inline int omp_get_num_threads(void) { return 1; }
    static inline int omp_get_thread_num(void) { return 0; }
    static inline void gncpu_barrier(void) {}
    #endif
    """
    const bint GNCPU_HAVE_OPENMP
    int omp_get_max_threads() noexcept nogil
    int omp_get_num_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil
    void gncpu_barrier() noexcept nogil
