/* W12's stand-in for an OpenMP simulator that sets its own thread count, as Debian's
   ngspice does for its BSIM3/BSIM4 models (its `num_threads` option): many short
   parallel regions with unequal work, so one thread often waits for the other at the
   end of a region, spinning unless told otherwise. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    long regions = argc > 1 ? atol(argv[1]) : 20000;
    double sum = 0;
    omp_set_num_threads(2);
    for (long i = 0; i < regions; i++) {
#pragma omp parallel reduction(+ : sum)
        {
            int work = 20000 * (omp_get_thread_num() + 1);
            for (int k = 0; k < work; k++) sum += k * 1e-9;
        }
    }
    printf("%.3f\n", sum);
    return 0;
}
