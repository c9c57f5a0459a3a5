def fizzbuzz(n):
    a = []
    for x in range(n):
        if x % 15 == 0: a.append("FizzBuzz")
        if x % 3 == 0: a.append("Fizz")
        if x % 5 == 0: a.append("Buzz")
    return a
