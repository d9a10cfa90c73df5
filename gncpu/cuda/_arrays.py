def is_cuda_array(obj): return False
