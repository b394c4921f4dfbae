"""Jobs on the engine: prompt files, the library, bulk and Ray generation, ranking, audition, bench."""
