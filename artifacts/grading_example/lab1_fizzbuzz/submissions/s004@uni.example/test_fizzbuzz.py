from fizzbuzz import fizzbuzz

assert fizzbuzz(15)[-1] == "FizzBuzz"
